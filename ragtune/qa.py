"""The QA format, read in one place: evaluation's questions, few-shot demonstrations and QA
training pairs are all this shape.

QA JSONL, one object per line:
    {"question": "...", "answers": ["...", ...]}   (or "answer": "..."; several are acceptable,
    the first is the one to show or learn)
    optional "id", "doc_id" (the gold document), "context" (the gold passage's text) and
    "answerable": false (then no answers are needed: declining is the right answer).
SQuAD JSON (`data[].paragraphs[].qas[]`, v1.1 or v2.0) is read directly; its gold context is
the paragraph.

A bad line is reported with its number and reason and left out; a file with no usable
question is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ragtune.errors import UsageError


class QAError(UsageError):
    """The QA file cannot be used at all."""


class BadRecord(ValueError):
    """One line of a JSONL file that cannot be used; the message says why."""


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: tuple[str, ...]
    answerable: bool = True
    doc_id: str | None = None
    context: str | None = None


@dataclass
class QASet:
    path: Path
    items: list[QAItem]
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    format: str = "jsonl"


def jsonl_records(raw: bytes) -> Iterator[tuple[int, object]]:
    """(line number, record) for every non-blank line; a line that is not JSON gives a BadRecord
    in place of its record."""
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield number, BadRecord(f"not valid JSON: {exc}")


def _answers(record: dict) -> tuple[str, ...]:
    if "answers" in record:
        answers = record["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise BadRecord('"answers" must be a list of strings')
    elif "answer" in record:
        if not isinstance(record["answer"], str):
            raise BadRecord('"answer" must be a string')
        answers = [record["answer"]]
    else:
        answers = []
    return tuple(dict.fromkeys(a.strip() for a in answers if a.strip()))  # deduplicated, order kept


def parse_item(record: object, line: int) -> QAItem:
    """One QA record, checked; BadRecord says what is wrong with it."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadRecord('"question" is missing or empty')
    answerable = record.get("answerable", True)
    if not isinstance(answerable, bool):
        raise BadRecord('"answerable" must be true or false')
    answers = _answers(record)
    if answerable and not answers:
        raise BadRecord('no "answers" (or "answer"); mark the question "answerable": false if it has none')
    for key in ("id", "doc_id", "context"):
        if record.get(key) is not None and not isinstance(record[key], (str, int)):
            raise BadRecord(f'"{key}" must be a string')
    item_id = str(record.get("id", f"line-{line}"))
    doc_id = record.get("doc_id")
    context = record.get("context")
    return QAItem(item_id, question.strip(), answers, answerable, str(doc_id) if doc_id is not None else None,
                  str(context) if context is not None else None)


def squad_items(data: dict, doc_ids: bool = False) -> list[QAItem]:
    """Every question of a SQuAD file with its paragraph as the gold context; with `doc_ids`,
    also the id the SQuAD corpus gives the paragraph ("<title>-<paragraph number>")."""
    items = []
    for article in data["data"]:
        for number, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answerable = not qa.get("is_impossible", False)
                answers = tuple(dict.fromkeys(a["text"].strip() for a in qa.get("answers", []) if a["text"].strip()))
                items.append(QAItem(str(qa["id"]), qa["question"].strip(), answers, answerable and bool(answers),
                                    f"{article['title']}-{number}" if doc_ids else None, paragraph["context"]))
    return items


def read_qa(path: Path) -> QASet:
    path = Path(path)
    if not path.is_file():
        raise QAError(f"QA file {path} does not exist (expected QA JSONL or SQuAD JSON)")
    raw = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QAError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise QAError(f"{path} is JSON but not SQuAD (no top-level \"data\" list); use QA JSONL")
        try:
            items = squad_items(data)
        except (KeyError, TypeError) as exc:
            raise QAError(f"{path} is not SQuAD JSON: missing {exc}") from None
        if not items:
            raise QAError(f"{path} has no questions")
        return QASet(path, items, format="squad")
    items, bad = [], []
    for number, record in jsonl_records(raw):
        try:
            if isinstance(record, BadRecord):
                raise record
            items.append(parse_item(record, number))
        except BadRecord as exc:
            bad.append((number, str(exc)))
    if not items:
        shown = "; ".join(f"line {n}: {why}" for n, why in bad[:3])
        raise QAError(f"{path} has no usable question" + (f" ({len(bad)} bad lines; {shown})" if bad else " (the file is empty)"))
    return QASet(path, items, bad)
