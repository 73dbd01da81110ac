"""Retrieval over the committed index: dense (FAISS), optionally fused with BM25, with
filters, a score floor and hot reload.

Hybrid search takes the top candidates of each ranking and fuses them by reciprocal rank
fusion (Cormack et al. 2009): score = sum of 1 / (rrf_k + rank). Every hit still carries
its dense cosine similarity, also for chunks only BM25 found, so the score floor and the
scores shown to users mean one thing whichever way a chunk was found.

The retriever holds one index snapshot and swaps in the newer version when the indexer
commits one. A request keeps the snapshot it started with, so a reload never changes
what a request in flight reads.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from indexer import collections, store
from indexer.embedder import Embedder
from indexer.snapshot import ChunkRecord, IndexSnapshot
from ragtune.settings import IndexSettings, RetrievalSettings


@dataclass(frozen=True)
class Filters:
    doc_ids: tuple[str, ...] = ()
    source_prefix: str | None = None
    metadata: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.doc_ids or self.source_prefix or self.metadata)

    def sql(self) -> tuple[str, list]:
        clauses, args = [], []
        if self.doc_ids:
            clauses.append(f"c.doc_id IN ({','.join('?' * len(self.doc_ids))})")
            args += list(self.doc_ids)
        if self.source_prefix:
            # a plain comparison of the first characters: no pattern to escape or to grow too complex
            clauses.append("(substr(s.path, 1, ?) = ? OR substr(c.source_id, 1, ?) = ?)")
            size = len(self.source_prefix)
            args += [size, self.source_prefix, size, self.source_prefix]
        for key, value in self.metadata.items():
            clauses.append("json_extract(d.metadata, ?) = ?")
            args += [f"$.{json.dumps(key)}", value]
        return " AND ".join(clauses), args


class Hit(NamedTuple):
    """A retrieved chunk, its score and where it ranked."""

    chunk: ChunkRecord
    score: float  # cosine similarity of query and chunk
    rank: int  # 1-based, among hits before the score floor
    dense_rank: int | None = None  # where each ranking put it (hybrid search), None: not in its top
    lexical_rank: int | None = None


def reciprocal_rank_fusion(rankings: list[list[int]], k: int) -> list[tuple[int, float]]:
    """Ids with their fused score, best first; ties keep the order of first appearance."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])


class Retriever:
    def __init__(
        self, directory: Path, index_settings: IndexSettings, embedder: Embedder, reload_check_seconds: float,
        retrieval: RetrievalSettings | None = None,
    ):
        retrieval = retrieval or RetrievalSettings()
        self._fusion_depth, self._rrf_k, self._hybrid = retrieval.fusion_depth, retrieval.rrf_k, retrieval.hybrid
        self.directory = directory
        self._index_settings = index_settings
        self.embedder = embedder
        self._identity = store.EmbedderIdentity(**embedder.identity())
        self._check_every = reload_check_seconds
        self._snapshot: IndexSnapshot | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def snapshot(self) -> IndexSnapshot:
        """The newest committed version (checked at most every `reload_check_seconds`)."""
        now = time.monotonic()
        current = self._snapshot
        if current is not None and now - self._checked_at < self._check_every:
            return current
        with self._lock:
            self._checked_at = now
            version = store.current_version(self.directory)
            if self._snapshot is None or version != self._snapshot.version_id:
                fresh = IndexSnapshot(self.directory, self._index_settings)
                store.check_embedder(fresh.manifest, self._identity, self.directory)
                if self._hybrid:
                    fresh.lexical()  # now, not mid-request: the version directory may be swept later
                self._snapshot = fresh
            return self._snapshot

    def _allowed_ids(self, snapshot: IndexSnapshot, filters: Filters) -> list[int]:
        where, args = filters.sql()
        return snapshot.chunk_ids(where, args)

    def search(
        self, query: str, k: int, filters: Filters = Filters(), min_score: float = -1.0,
        snapshot: IndexSnapshot | None = None, hybrid: bool | None = None, vector=None,
    ) -> tuple[list[Hit], list[Hit]]:
        """Hits at or above `min_score`, best first, and those below it (in `snapshot`, default the newest).
        `hybrid`: fuse BM25 with the dense ranking (None: setting retrieval.hybrid). `vector`: the
        query's embedding, when the caller has it already."""
        snapshot = snapshot or self.snapshot()
        hybrid = self._hybrid if hybrid is None else hybrid
        vector = self.embedder.embed([query]) if vector is None else vector
        params, allowed = None, None
        if filters:
            allowed = self._allowed_ids(snapshot, filters)
            if not allowed:
                return [], []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        k = min(k, snapshot.index.ntotal, len(allowed) if allowed is not None else k)
        if k <= 0:
            return [], []
        depth = max(k, self._fusion_depth) if hybrid else k
        scores, ids = snapshot.index.search(vector, min(depth, snapshot.index.ntotal), params=params)
        dense = {int(i): float(s) for i, s in zip(ids[0], scores[0]) if i >= 0}
        if hybrid:
            lexical = [chunk_id for chunk_id, _ in snapshot.lexical().search(query, depth, allowed)]
            dense_ranks = {i: r for r, i in enumerate(dense, start=1)}
            lexical_ranks = {i: r for r, i in enumerate(lexical, start=1)}
            order = [i for i, _ in reciprocal_rank_fusion([list(dense), lexical], self._rrf_k)[:k]]
            missing = [i for i in order if i not in dense]
            if missing:  # found by BM25 alone: score it by cosine too
                stored = np.vstack([snapshot.index.reconstruct(i) for i in missing])
                dense.update({i: float(s) for i, s in zip(missing, stored @ vector[0])})
            ranked = [(i, dense[i], dense_ranks.get(i), lexical_ranks.get(i)) for i in order]
        else:
            ranked = [(i, s, None, None) for i, s in dense.items()]
        records = {c.id: c for c in snapshot.chunks([r[0] for r in ranked])}
        hits = [
            Hit(records[i], s, rank, dense_rank, lexical_rank)
            for rank, (i, s, dense_rank, lexical_rank) in enumerate(ranked, start=1) if i in records
        ]
        return [h for h in hits if h.score >= min_score], [h for h in hits if h.score < min_score]


class Retrievers:
    """A retriever per collection: the default one given, the others made on first use over
    `index.collections_dir/<name>`, with the same embedder and settings."""

    def __init__(self, default: Retriever, index: IndexSettings, reload_check_seconds: float, retrieval: RetrievalSettings):
        self.default = default
        self._index, self._reload, self._retrieval = index, reload_check_seconds, retrieval
        self._by_name: dict[str, Retriever] = {collections.DEFAULT: default}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> Retriever:
        """The collection's retriever; an unknown name is a CollectionNotFound listing the known ones."""
        name = name or collections.DEFAULT
        with self._lock:
            found = self._by_name.get(name)
        if found is None:
            path = collections.existing(self._index, name)
            with self._lock:
                found = self._by_name.setdefault(
                    name, Retriever(path, self._index, self.default.embedder, self._reload, self._retrieval))
        return found

