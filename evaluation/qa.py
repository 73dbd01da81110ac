"""Evaluation questions: sampled, and SQuAD split into halves. The QA format itself is read by
ragtune/qa.py (evaluation, few-shot demonstrations and training read it alike).

A QA file's `context` is matched against the index when it gives no doc_id (evaluation/gold.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ragtune.qa import QAItem, squad_items


def select(items: list[QAItem], sample: int | None, limit: int | None, seed: int) -> list[QAItem]:
    """`sample`: that many at random (seeded, file order kept); then the first `limit`."""
    if sample is not None and sample < len(items):
        keep = set(random.Random(seed).sample(range(len(items)), sample))
        items = [item for i, item in enumerate(items) if i in keep]
    return items[:limit] if limit is not None else items


def balanced(items: list[QAItem], answerable: int, unanswerable: int, seed: int) -> list[QAItem]:
    """A seeded sample for tuning scripts: `answerable` answerable questions, then `unanswerable` others."""
    rng = random.Random(seed)
    return (rng.sample([i for i in items if i.answerable], answerable)
            + rng.sample([i for i in items if not i.answerable], unanswerable))


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
