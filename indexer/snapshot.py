"""Read one committed version of an index: search vectors, fetch chunks, report stats."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from indexer import lexical, store, vectors
from ragtune.settings import IndexSettings

log = logging.getLogger("ragtune.index")


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk as stored, with its source's path and its document's title and metadata."""

    id: int
    doc_id: str
    source_id: str
    source_path: str
    position: int
    text: str
    headings: tuple[str, ...]
    context: str
    page: int | None
    token_count: int
    content_hash: str
    title: str | None
    metadata: dict


_CHUNK_QUERY = """
SELECT c.id, c.doc_id, c.source_id, s.path AS source_path, c.position, c.text, c.headings, c.context, c.page,
       c.token_count, c.content_hash, d.title, d.metadata
FROM chunks c JOIN sources s USING (source_id) JOIN documents d USING (doc_id)
"""


class IndexSnapshot:
    """An immutable view of one version. Safe to share between threads for reads."""

    def __init__(self, directory: Path, settings: IndexSettings | None = None):
        self.directory = directory
        self.version_dir = store.committed_version_dir(directory)
        self.manifest = store.read_manifest(self.version_dir)
        self.version_id = self.manifest.version_id
        self.index = vectors.read(self.version_dir / store.VECTORS)
        if settings is not None:
            vectors.set_search_depth(self.index, settings.hnsw_ef_search)
        self._db = store.connect_readonly(self.version_dir / store.CHUNKS_DB)

        self._lexical: lexical.LexicalIndex | None = None
        self._lexical_lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def lexical(self) -> lexical.LexicalIndex:
        """The BM25 index of this version, loaded on first use (built in memory for older indexes)."""
        with self._lexical_lock:
            if self._lexical is None:
                directory = self.version_dir / store.LEXICAL
                if (directory / lexical.IDS_FILE).is_file():
                    self._lexical = lexical.LexicalIndex.load(directory)
                else:
                    log.info("index version %s has no BM25 index; building one in memory", self.version_id)
                    self._lexical = lexical.LexicalIndex.in_memory(self._db)
            return self._lexical

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and chunk ids, best first, shape (len(queries), k); id -1 pads short results."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(queries, min(k, max(1, self.index.ntotal)))

    def chunks(self, ids: list[int]) -> list[ChunkRecord]:
        """Chunk rows for `ids`, in the order asked (unknown ids are left out)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {r["id"]: r for r in self._db.execute(f"{_CHUNK_QUERY} WHERE c.id IN ({marks})", [int(i) for i in ids])}
        return [_record(rows[i]) for i in ids if i in rows]

    def chunk_ids(self, where: str, args: list) -> list[int]:
        """Ids of the chunks matching an SQL condition over chunks c, sources s, documents d."""
        query = "SELECT c.id FROM chunks c JOIN sources s USING (source_id) JOIN documents d USING (doc_id)"
        return [row[0] for row in self._db.execute(f"{query} WHERE {where}" if where else query, args)]

    def all_chunks(self) -> list[ChunkRecord]:
        """Every chunk, in id order (= vector id order)."""
        return [_record(row) for row in self._db.execute(f"{_CHUNK_QUERY} ORDER BY c.id")]

    def sources(self) -> list[dict]:
        query = """
            SELECT s.source_id, s.path, s.size, s.indexed_at, s.warnings,
                   (SELECT COUNT(*) FROM documents d WHERE d.source_id = s.source_id) AS documents,
                   (SELECT COUNT(*) FROM chunks c WHERE c.source_id = s.source_id) AS chunks
            FROM sources s ORDER BY s.path"""
        cursor = self._db.execute(query)
        names = [column[0] for column in cursor.description]
        sources = [dict(zip(names, row)) for row in cursor]
        for source in sources:
            source["warnings"] = json.loads(source["warnings"])
        return sources

    def stats(self) -> dict:
        tokens = self._db.execute("SELECT COALESCE(SUM(token_count), 0), COALESCE(MAX(token_count), 0) FROM chunks").fetchone()
        size = sum(p.stat().st_size for p in self.version_dir.iterdir())
        m = self.manifest
        return {
            "directory": str(self.directory),
            "version_id": m.version_id,
            "created_at": m.created_at,
            "format_version": m.format_version,
            "embedding": m.embedding.model_dump(),
            "chunking": m.chunking,
            "index_kind": m.index_kind,
            "sources": m.sources,
            "documents": m.documents,
            "chunks": m.chunks,
            "vectors": int(self.index.ntotal),
            "tokens": int(tokens[0]),
            "max_chunk_tokens": int(tokens[1]),
            "bytes_on_disk": size,
        }


def _record(row: sqlite3.Row) -> ChunkRecord:
    fields = dict(row)
    return ChunkRecord(**{**fields, "headings": tuple(json.loads(fields["headings"])), "metadata": json.loads(fields["metadata"])})
