"""Evaluation questions: QA JSONL or SQuAD JSON, read into one shape; SQuAD split into halves.

QA JSONL, one object per line:
    {"question": "...", "answers": ["...", ...]}   (or "answer": "..."; several are acceptable)
    optional "id", "doc_id" (the gold document), "context" (the gold passage's text, matched
    against the index when no doc_id is given) and "answerable": false (then no answers are
    needed: declining is the right answer).
SQuAD JSON (`data[].paragraphs[].qas[]`, v1.1 or v2.0) is read directly; its gold document
is the paragraph, found in the index by its text.

A bad line is reported with its number and reason and left out; a file with no usable
question is refused.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ragtune.errors import UsageError


class QAError(UsageError):
    """The QA file cannot be used at all."""


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


def _answers(record: dict) -> tuple[str, ...]:
    if "answers" in record:
        answers = record["answers"]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError('"answers" must be a list of strings')
    elif "answer" in record:
        if not isinstance(record["answer"], str):
            raise ValueError('"answer" must be a string')
        answers = [record["answer"]]
    else:
        answers = []
    return tuple(dict.fromkeys(a.strip() for a in answers if a.strip()))  # deduplicated, order kept


def parse_item(record: object, line: int) -> QAItem:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" is missing or empty')
    answerable = record.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ValueError('"answerable" must be true or false')
    answers = _answers(record)
    if answerable and not answers:
        raise ValueError('no "answers" (or "answer"); mark the question "answerable": false if it has none')
    for key in ("id", "doc_id", "context"):
        if record.get(key) is not None and not isinstance(record[key], (str, int)):
            raise ValueError(f'"{key}" must be a string')
    item_id = str(record.get("id", f"line-{line}"))
    doc_id = record.get("doc_id")
    return QAItem(item_id, question.strip(), answers, answerable, str(doc_id) if doc_id is not None else None,
                  record.get("context"))


def squad_items(data: dict, doc_ids: bool = False) -> list[QAItem]:
    """Every question of a SQuAD file with its paragraph as the gold context; with `doc_ids`,
    also the id `split_squad`'s corpus gives the paragraph ("<title>-<paragraph number>")."""
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
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(parse_item(json.loads(line), number))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.append((number, f"not valid JSON: {exc}"))
        except ValueError as exc:
            bad.append((number, str(exc)))
    if not items:
        shown = "; ".join(f"line {n}: {why}" for n, why in bad[:3])
        raise QAError(f"{path} has no usable question" + (f" ({len(bad)} bad lines; {shown})" if bad else " (the file is empty)"))
    return QASet(path, items, bad)


def select(items: list[QAItem], sample: int | None, limit: int | None, seed: int) -> list[QAItem]:
    """`sample`: that many at random (seeded, file order kept); then the first `limit`."""
    if sample is not None and sample < len(items):
        keep = set(random.Random(seed).sample(range(len(items)), sample))
        items = [item for i, item in enumerate(items) if i in keep]
    return items[:limit] if limit is not None else items


# -- SQuAD as a corpus and two halves -----------------------------------------------------
@dataclass
class SquadSplit:
    corpus: list[dict]
    train: list[QAItem]
    test: list[QAItem]


def split_squad(data: dict, test_fraction: float, seed: int) -> SquadSplit:
    """Paragraphs shuffled (seeded) and split: a paragraph's questions all land on one side,
    so no held-out question is about a paragraph the training half saw questions on."""
    corpus = [
        {"id": f"{a['title']}-{i}", "title": a["title"].replace("_", " "), "text": p["context"]}
        for a in data["data"] for i, p in enumerate(a["paragraphs"])
    ]
    ids = [record["id"] for record in corpus]
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: round(len(ids) * test_fraction)])
    items = squad_items(data, doc_ids=True)
    return SquadSplit(corpus, [q for q in items if q.doc_id not in test_ids], [q for q in items if q.doc_id in test_ids])


def qa_record(item: QAItem) -> dict:
    record = {k: v for k, v in asdict(item).items() if v is not None}
    record["answers"] = list(item.answers)
    return record


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
