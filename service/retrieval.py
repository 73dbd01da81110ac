"""Dense retrieval over the committed index, with filters, a score floor and hot reload.

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

import faiss

from indexer import store
from indexer.embedder import Embedder
from indexer.snapshot import ChunkRecord, IndexSnapshot
from ragtune.settings import IndexSettings


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
            clauses.append("(s.path LIKE ? ESCAPE '\\' OR c.source_id LIKE ? ESCAPE '\\')")
            escaped = self.source_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [escaped, escaped]
        for key, value in self.metadata.items():
            clauses.append("json_extract(d.metadata, ?) = ?")
            args += [f"$.{json.dumps(key)}", value]
        return " AND ".join(clauses), args


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float
    rank: int  # 1-based, among hits before the score floor


class Retriever:
    def __init__(self, directory: Path, index_settings: IndexSettings, embedder: Embedder, reload_check_seconds: float):
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
                self._snapshot = fresh
            return self._snapshot

    def _allowed_ids(self, snapshot: IndexSnapshot, filters: Filters) -> list[int]:
        where, args = filters.sql()
        return snapshot.chunk_ids(where, args)

    def search(
        self, query: str, k: int, filters: Filters = Filters(), min_score: float = -1.0, snapshot: IndexSnapshot | None = None
    ) -> tuple[list[Hit], list[Hit]]:
        """Hits at or above `min_score`, best first, and those below it (in `snapshot`, default the newest)."""
        snapshot = snapshot or self.snapshot()
        vector = self.embedder.embed([query])
        params = None
        if filters:
            allowed = self._allowed_ids(snapshot, filters)
            if not allowed:
                return [], []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            k = min(k, len(allowed))
        k = min(k, snapshot.index.ntotal)
        if k == 0:
            return [], []
        scores, ids = snapshot.index.search(vector, k, params=params)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        records = {c.id: c for c in snapshot.chunks([i for i, _ in pairs])}
        hits = [Hit(records[i], s, rank) for rank, (i, s) in enumerate(pairs, start=1) if i in records]
        return [h for h in hits if h.score >= min_score], [h for h in hits if h.score < min_score]
