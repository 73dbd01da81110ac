"""Hybrid retrieval: BM25 and dense fused by reciprocal rank fusion, with filters and scores."""

from __future__ import annotations

import json

import pytest

from ragtune.settings import RetrievalSettings
from service.retrieval import Filters, Retriever, reciprocal_rank_fusion


def test_rrf_adds_reciprocal_ranks_and_keeps_first_seen_order_on_ties():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4]], k=60)
    assert [i for i, _ in fused] == [3, 1, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)


@pytest.fixture
def retriever(ingestor, settings, squad, tmp_path, embedder):
    records = [
        {"id": f"{a['title']}-{i}", "title": a["title"], "text": p["context"], "article": a["title"]}
        for a in squad["data"] for i, p in enumerate(a["paragraphs"])
    ]
    (tmp_path / "squad.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    ingestor.ingest([str(tmp_path / "squad.jsonl")], settings.index.dir, root=tmp_path)
    return Retriever(settings.index.dir, settings.index, embedder, 0, RetrievalSettings())


@pytest.mark.slow
def test_hybrid_hits_carry_cosine_scores_and_both_ranks(retriever):
    hits, _ = retriever.search("Who was the duke in the battle of Hastings?", 8, hybrid=True)
    assert len(hits) == 8 and [h.rank for h in hits] == list(range(1, 9))
    query = retriever.embedder.embed(["Who was the duke in the battle of Hastings?"])[0]
    snapshot = retriever.snapshot()
    for hit in hits:  # the score is the cosine whichever ranking found the chunk
        assert hit.score == pytest.approx(float(snapshot.index.reconstruct(hit.chunk.id) @ query), abs=1e-5)
        assert hit.dense_rank is not None or hit.lexical_rank is not None
    assert any(h.lexical_rank is not None for h in hits) and any(h.dense_rank is not None for h in hits)


@pytest.mark.slow
def test_hybrid_search_honours_filters_on_both_sides(retriever):
    article = "Sky_(United_Kingdom)"
    hits, _ = retriever.search("Normans in Normandy", 5, Filters(metadata={"article": article}), hybrid=True)
    assert hits and all(h.chunk.metadata["article"] == article for h in hits)
    one = "squad.jsonl#Normans-3"
    hits, _ = retriever.search("Normandy", 5, Filters(doc_ids=(one,)), hybrid=True)
    assert {h.chunk.doc_id for h in hits} == {one}


@pytest.mark.slow
def test_an_exact_rare_term_is_found_by_the_lexical_side(retriever):
    # A bare name: BM25 matches it exactly, and fusion keeps its best match near the top.
    hits, _ = retriever.search("Rollo", 3, hybrid=True)
    lexical_best = [h for h in hits if h.lexical_rank == 1]
    assert lexical_best and "Rollo" in lexical_best[0].chunk.text
    dense_only, _ = retriever.search("Rollo", 3, hybrid=False)
    assert all(h.lexical_rank is None and h.dense_rank is None for h in dense_only)
