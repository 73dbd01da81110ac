"""Training sequences: the chat rendered with the base model's template, loss on answers only.

Retrieval-aware examples (`--with-retrieval`) get their prompt from the service's own
pipeline (service/pipeline.py: the same retriever, packer, templates and passage
numbering as `/ask`), so the adapter learns the very format it will be served with.
Judge examples (`--judge`) put the same passages and question in the answerability check's
prompt (service/answerable.py), and the target is its reply: Yes when the answer is in them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from finetune.data import Example
from ragtune.errors import UsageError
from service.generation.base import Messages
from service.generation.tokens import ChatCounter, ChatTokens

IGNORE = -100  # label of a token the loss skips (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class Sequence:
    input_ids: list[int]
    labels: list[int]
    line: int

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def encode(tokens: ChatTokens, messages: Messages, line: int) -> Sequence:
    """Token ids of the whole chat; labels keep the assistant turns (with their end-of-turn
    token, so the model learns to stop) and mask everything else."""
    full = tokens.render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokens.render(messages[:i], add_generation_prompt=True)  # what the model is given at inference
        upto = tokens.render(messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise UsageError("the base model's chat template does not render conversations incrementally; cannot mask prompts")
        spans.append((len(prompt), len(upto.rstrip())))
    encoded = tokens.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    return Sequence(list(encoded["input_ids"]), labels, line)


@dataclass
class RetrievalReport:
    index_versions: set
    cited: int = 0  # the answer was found in a packed passage, and the target cites it
    uncited: int = 0  # answerable, but not found in any packed passage: the target is the plain answer
    declined: int = 0  # unanswerable: the target is the decline answer
    yes: int = 0  # judge examples: the packed passages hold the answer
    no: int = 0  # judge examples: unanswerable, or the answer is in no packed passage

    def as_dict(self, judge: bool = False) -> dict:
        if judge:
            return {"judge": {"yes": self.yes, "no": self.no}}
        return {"cited": self.cited, "uncited": self.uncited, "declined": self.declined}


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def with_retrieval(examples: list[Example], settings, embedder, tokens: ChatTokens,
                   judge: bool = False) -> tuple[list[Example], RetrievalReport]:
    """QA pairs re-prompted exactly as /ask would (other shapes pass through unchanged). The
    target cites the passage that holds the answer, as the system prompt asks: "answer [n]".
    judge: the check's prompt on the same passages instead, and the target Yes or No."""
    from service import answerable
    from service.pipeline import build_pipeline

    window = min(settings.generation.context_window, settings.finetune.max_seq_length)
    answer_tokens = min(settings.generation.max_answer_tokens, window // 4)
    pipeline = build_pipeline(settings, embedder, None, counter=ChatCounter(tokens, window))
    report = RetrievalReport(set())
    out = []
    for example in examples:
        if example.kind != "qa":
            out.append(example)
            continue
        prepared = pipeline.prepare(example.question, [], None, answer_tokens)
        report.index_versions.add(prepared.index_version)
        answer = example.answer
        holder = next((p for p in sorted(prepared.passages, key=lambda p: p.number)
                       if _normalize(example.answer) in _normalize(p.text)), None) if example.answerable else None
        if judge:
            report.yes, report.no = report.yes + (holder is not None), report.no + (holder is None)
            reply = {"role": "assistant", "content": answerable.JUDGE_YES if holder is not None else answerable.JUDGE_NO}
            out.append(replace(example, messages=(*answerable.check_messages(prepared.messages), reply)))
            continue
        if example.answerable:
            if holder is not None:
                answer = f"{example.answer} [{holder.number}]"
                report.cited += 1
            else:
                report.uncited += 1
        else:
            report.declined += 1
        out.append(replace(example, messages=(*prepared.messages, {"role": "assistant", "content": answer})))
    return out, report
