"""Retrieval quality on real data: SQuAD 2.0 dev paragraphs, one document per paragraph."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.snapshot import IndexSnapshot

pytestmark = pytest.mark.slow


def retrieval_metrics(ranks: list[int | None], ks=(1, 5, 10)) -> dict[str, float]:
    """recall@k and MRR from the 1-based rank of the gold item (None: not retrieved)."""
    n = len(ranks)
    metrics = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    metrics["mrr"] = sum(1 / r for r in ranks if r is not None) / n
    return metrics


def test_metric_helper_on_a_hand_checked_case():
    assert retrieval_metrics([1, 2, None, 10]) == {"recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75, "mrr": (1 + 0.5 + 0.1) / 4}


def test_gold_paragraph_in_top5_for_80_percent_of_answerable_questions(ingestor, settings, squad, tmp_path, report):
    records, questions = [], []
    for article in squad["data"]:
        for i, paragraph in enumerate(article["paragraphs"]):
            doc = f"{article['title']}-{i}"
            records.append({"id": doc, "title": article["title"].replace("_", " "), "text": paragraph["context"]})
            questions += [(qa["question"], doc) for qa in paragraph["qas"] if not qa["is_impossible"]]
    corpus = tmp_path / "squad.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in records))
    ingested = ingestor.ingest([str(corpus)], settings.index.dir, root=tmp_path)
    assert ingested.added and not ingested.skipped and len(questions) == 705

    snap = IndexSnapshot(settings.index.dir)
    assert snap.stats()["documents"] == 173
    scores, ids = snap.search(ingestor.embedder.embed([q for q, _ in questions]), 30)
    id_to_doc = {c.id: c.doc_id for c in snap.all_chunks()}
    ranks = []
    for (question, gold), row in zip(questions, ids):
        docs = list(dict.fromkeys(id_to_doc[int(i)] for i in row if i >= 0))  # rank documents, not chunks
        ranks.append(docs.index(f"squad.jsonl#{gold}") + 1 if f"squad.jsonl#{gold}" in docs else None)
    metrics = retrieval_metrics(ranks)
    report("SQuAD dense retrieval over 173 paragraphs, 705 answerable questions: "
          + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    assert metrics["recall@5"] >= 0.80
    assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
