"""Training data: JSONL in the common shapes, validated line by line, turned into chats.

Accepted per line (one JSON object):
- chat:        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
               every assistant turn is a target; the last turn must be the assistant's;
- instruction: {"prompt": "...", "completion": "..."} or {"instruction": "...", "input": "...", "output": "..."};
- QA pair:     the QA format of ragtune/qa.py ({"question": "...", "answer"/"answers": ...},
               optional "context", "answerable"); the first answer is the target, or the
               prompt settings' decline answer for an unanswerable question.

A bad line is reported with its number and reason and left out; the run refuses an
empty or all-bad file. QA pairs keep their question and answer apart, so
retrieval-aware training (finetune/examples.py) can build the served prompt for them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.errors import UsageError
from ragtune.qa import BadRecord, jsonl_records, parse_item
from ragtune.settings import PromptSettings
from service.packing import prompt_messages

ROLES = ("system", "user", "assistant")


class DataError(UsageError):
    """The training file cannot be used at all (missing, empty, or no good line)."""


@dataclass(frozen=True)
class Example:
    messages: tuple[dict, ...]  # the whole conversation; every assistant turn is learned
    line: int
    kind: str  # "chat" | "instruction" | "qa"
    question: str | None = None  # QA pairs only: what retrieval-aware training retrieves for
    answer: str | None = None
    answerable: bool = True


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass
class TrainingData:
    path: Path
    sha256: str
    size_bytes: int
    examples: list[Example]
    bad: list[BadLine] = field(default_factory=list)

    @property
    def kinds(self) -> dict[str, int]:
        return dict(Counter(e.kind for e in self.examples))


class _Bad(Exception):
    pass


def _text(record: dict, key: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise _Bad(f'"{key}" is missing')
        return None
    if not isinstance(value, str):
        raise _Bad(f'"{key}" must be a string, got {type(value).__name__}')
    if required and not value.strip():
        raise _Bad(f'"{key}" is empty')
    return value


def _chat(record: dict) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Bad('"messages" must be a non-empty list of {"role", "content"} objects')
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _Bad(f'messages[{i}] must be an object with a string "content"')
        role = message.get("role")
        if role not in ROLES:
            raise _Bad(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise _Bad(f"messages[{i}] is a system message; only the first message may be one")
        if role == "assistant" and not message["content"].strip():
            raise _Bad(f"messages[{i}] is an empty assistant message: nothing to learn")
        out.append({"role": role, "content": message["content"]})
    if out[-1]["role"] != "assistant":
        raise _Bad("the last message must be the assistant's answer (it is what the adapter learns)")
    if not any(m["role"] == "user" for m in out):
        raise _Bad("no user message")
    return out


def _with_context(question: str, context: str | None, prompt: PromptSettings) -> list[dict]:
    """A QA pair with its own passage reads like a served prompt with that one passage."""
    if not context:
        return [{"role": "user", "content": question}]
    passage = prompt.passage_template.format(number=1, title="", text=context, source="").replace("\n\n", "\n")
    return prompt_messages(prompt, question, [passage])


def parse_record(record: object, line: int, prompt: PromptSettings) -> Example:
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return Example(tuple(_chat(record)), line, "chat")
    if "prompt" in record or "completion" in record:
        user, answer = _text(record, "prompt"), _text(record, "completion")
        return Example(({"role": "user", "content": user}, {"role": "assistant", "content": answer}), line, "instruction")
    if "instruction" in record or "output" in record:
        instruction, extra, answer = _text(record, "instruction"), _text(record, "input", False), _text(record, "output")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return Example(({"role": "user", "content": user}, {"role": "assistant", "content": answer}), line, "instruction")
    if "question" in record:
        try:
            item = parse_item(record, line)
        except BadRecord as exc:
            raise _Bad(str(exc)) from None
        answer = item.answers[0] if item.answerable else prompt.decline_answer
        messages = (*_with_context(item.question, item.context, prompt), {"role": "assistant", "content": answer})
        return Example(messages, line, "qa", question=item.question, answer=answer, answerable=item.answerable)
    keys = ", ".join(sorted(record)) or "none"
    raise _Bad(
        f"no known shape (keys: {keys}); expected messages, prompt/completion, "
        "instruction/output, or question/answer"
    )


def load_training_data(path: Path, prompt: PromptSettings) -> TrainingData:
    """Every line checked; bad ones listed in `bad`. Raises DataError when nothing is usable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training data {path} does not exist (expected a JSONL file)")
    raw = path.read_bytes()
    examples, bad = [], []
    for number, record in jsonl_records(raw):
        try:
            if isinstance(record, BadRecord):
                raise _Bad(str(record))
            examples.append(parse_record(record, number, prompt))
        except _Bad as exc:
            bad.append(BadLine(number, str(exc)))
    data = TrainingData(path, hashlib.sha256(raw).hexdigest(), len(raw), examples, bad)
    if not examples:
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:3])
        raise DataError(f"{path} has no usable example" + (f" ({len(bad)} bad lines; {shown})" if bad else " (the file is empty)"))
    return data
