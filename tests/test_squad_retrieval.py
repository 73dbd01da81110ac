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


def doc_rank(chunk_ids: list[int], id_to_doc: dict[int, str], gold: str) -> int | None:
    docs = list(dict.fromkeys(id_to_doc[i] for i in chunk_ids))  # rank documents, not chunks
    return docs.index(gold) + 1 if gold in docs else None


def test_retrieval_quality_and_the_hybrid_default_agree(ingestor, settings, squad, tmp_path, report):
    """Dense, BM25 and their fusion on the same questions; the hybrid default must be the better one."""
    from ragtune.settings import RetrievalSettings
    from service.retrieval import Retriever

    records, questions = [], []
    for article in squad["data"]:
        for i, paragraph in enumerate(article["paragraphs"]):
            doc = f"{article['title']}-{i}"
            records.append({"id": doc, "title": article["title"].replace("_", " "), "text": paragraph["context"]})
            questions += [(qa["question"], f"squad.jsonl#{doc}") for qa in paragraph["qas"] if not qa["is_impossible"]]
    corpus = tmp_path / "squad.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in records))
    ingested = ingestor.ingest([str(corpus)], settings.index.dir, root=tmp_path)
    assert ingested.added and not ingested.skipped and len(questions) == 705

    snap = IndexSnapshot(settings.index.dir)
    assert snap.stats()["documents"] == 173
    id_to_doc = {c.id: c.doc_id for c in snap.all_chunks()}
    scores, ids = snap.search(ingestor.embedder.embed([q for q, _ in questions]), 30)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    dense = [doc_rank([int(i) for i in row if i >= 0], id_to_doc, gold) for (_, gold), row in zip(questions, ids)]
    bm25 = [doc_rank([i for i, _ in snap.lexical().search(q, 30)], id_to_doc, gold) for q, gold in questions]
    retriever = Retriever(settings.index.dir, settings.index, ingestor.embedder, 60, RetrievalSettings())
    fused = [
        doc_rank([h.chunk.id for h in retriever.search(q, 30, hybrid=True)[0]], id_to_doc, gold) for q, gold in questions
    ]
    results = {name: retrieval_metrics(ranks) for name, ranks in (("dense", dense), ("bm25", bm25), ("hybrid", fused))}
    for name, metrics in results.items():
        report(f"SQuAD {name:>6} retrieval, 173 paragraphs, 705 answerable questions: "
               + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    assert results["dense"]["recall@5"] >= 0.80
    for metrics in results.values():
        assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    hybrid_wins = results["hybrid"]["recall@5"] >= results["dense"]["recall@5"] and results["hybrid"]["mrr"] >= results["dense"]["mrr"]
    assert RetrievalSettings().hybrid == hybrid_wins, f"the hybrid default contradicts the numbers: {results}"
