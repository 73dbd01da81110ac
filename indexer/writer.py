"""The one writer of an index directory: lock, stage changes, commit whole or not at all."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from indexer import lexical, store, vectors
from indexer.chunking import Chunk
from indexer.loaders import Document
from ragtune.errors import IndexIncompatible, IndexLocked
from ragtune.settings import ChunkingSettings, IndexSettings


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: with RAGTUNE_CRASHPOINT=<name> the process
    announces that it reached <name> and waits there to be killed."""
    wanted = os.environ.get("RAGTUNE_CRASHPOINT")
    if wanted == name:
        Path(os.environ["RAGTUNE_CRASHPOINT_FILE"]).write_text(name)
        while True:
            time.sleep(60)


class IndexWriter:
    """Usage: ``with IndexWriter(dir, ...) as w: w.put_source(...); w.commit()``.

    Nothing is visible to readers until :meth:`commit` returns; leaving the block without
    committing (an exception, Ctrl-C) discards the staged work.
    """

    def __init__(self, directory: Path, index: IndexSettings, chunking: ChunkingSettings, embedder: store.EmbedderIdentity):
        self.directory = directory
        self._index_settings = index
        self._chunking = chunking.model_dump()
        self._embedder = embedder
        self._lock_handle = None
        self._conn = None
        self._staging: Path | None = None
        self._removed_ids: list[int] = []
        self._added_ids: list[np.ndarray] = []
        self._added_vectors: list[np.ndarray] = []
        self.previous: store.Manifest | None = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> IndexWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / store.VERSIONS).mkdir(exist_ok=True)
        self._lock()
        try:
            store.sweep(self.directory, self._index_settings.keep_versions)
            if store.current_version(self.directory) is not None:
                self.previous = store.read_manifest(store.committed_version_dir(self.directory))
                store.check_embedder(self.previous, self._embedder, self.directory)
                if self.previous.chunking != self._chunking:
                    raise IndexIncompatible(
                        f"index at {self.directory} was chunked with {self.previous.chunking}, not "
                        f"{self._chunking}; use the same chunking settings or another --index-dir"
                    )
            self._begin()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None

    def _lock(self) -> None:
        handle = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise IndexLocked(
                f"index at {self.directory} is being written by {holder}; wait for it to finish and run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock_handle = handle

    def _begin(self) -> None:
        sequence = self.previous.sequence + 1 if self.previous else 1
        self.version_id = store.new_version_id(sequence)
        self._sequence = sequence
        self._staging = self.directory / store.STAGING / self.version_id
        self._staging.mkdir(parents=True)
        previous_db = store.committed_version_dir(self.directory) / store.CHUNKS_DB if self.previous else None
        self._conn = store.stage_database(previous_db, self._staging / store.CHUNKS_DB)
        self._conn.execute("BEGIN")

    # -- reads of the state being built ----------------------------------------------
    def source_hash(self, source_id: str) -> str | None:
        row = self._conn.execute("SELECT content_hash FROM sources WHERE source_id = ?", (source_id,)).fetchone()
        return row[0] if row else None

    def sources(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._conn.execute("SELECT source_id, path FROM sources ORDER BY source_id")]

    def move_source(self, source_id: str, path: str) -> None:
        """An unchanged source found at another path (its corpus moved): remember where it is now."""
        self._conn.execute("UPDATE sources SET path = ? WHERE source_id = ? AND path != ?", (path, source_id, path))

    def has_changes(self) -> bool:
        return bool(self._removed_ids or self._added_ids) or self._conn.total_changes > 0

    # -- changes -----------------------------------------------------------------------
    def delete_source(self, source_id: str) -> int:
        """Remove a source with its documents, chunks and vectors. Returns chunks removed."""
        ids = [r[0] for r in self._conn.execute("SELECT id FROM chunks WHERE source_id = ?", (source_id,))]
        self._conn.execute("DELETE FROM chunks WHERE source_id = ?", (source_id,))
        self._conn.execute("DELETE FROM documents WHERE source_id = ?", (source_id,))
        self._conn.execute("DELETE FROM sources WHERE source_id = ?", (source_id,))
        self._removed_ids.extend(ids)
        return len(ids)

    def delete_document(self, doc_id: str) -> int | None:
        """Remove one document (a record of a JSONL file, say) with its chunks and vectors; None if
        there is none. Its source is marked changed, so adding the file again brings it back."""
        row = self._conn.execute("SELECT source_id FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        if row is None:
            return None
        ids = [r[0] for r in self._conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
        self._conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        self._conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
        self._conn.execute("UPDATE sources SET content_hash = '' WHERE source_id = ?", (row[0],))
        if self._conn.execute("SELECT 1 FROM documents WHERE source_id = ?", (row[0],)).fetchone() is None:
            self._conn.execute("DELETE FROM sources WHERE source_id = ?", (row[0],))
        self._removed_ids.extend(ids)
        return len(ids)

    def put_source(
        self,
        source_id: str,
        path: str,
        content_hash: str,
        size: int,
        documents: list[Document],
        chunks: list[Chunk],
        embeddings: np.ndarray,
        warnings: list[str],
    ) -> None:
        """Insert (or replace) one source file with its documents and embedded chunks."""
        self.delete_source(source_id)
        self._conn.execute(
            "INSERT INTO sources (source_id, path, content_hash, size, indexed_at, warnings) VALUES (?, ?, ?, ?, ?, ?)",
            (source_id, path, content_hash, size, store.now(), json.dumps(warnings)),
        )
        self._conn.executemany(
            "INSERT INTO documents (doc_id, source_id, title, metadata) VALUES (?, ?, ?, ?)",
            [(d.doc_id, source_id, d.title, json.dumps(d.metadata)) for d in documents],
        )
        ids = []
        for chunk, vector in zip(chunks, embeddings):
            cursor = self._conn.execute(
                "INSERT INTO chunks (doc_id, source_id, position, text, headings, context, page, token_count, "
                "content_hash, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    chunk.doc_id, source_id, chunk.position, chunk.text, json.dumps(chunk.headings),
                    chunk.context, chunk.page, chunk.token_count,
                    hashlib.sha256(chunk.text.encode()).hexdigest()[:16], vector.tobytes(),
                ),
            )
            ids.append(cursor.lastrowid)
        self._added_ids.append(np.asarray(ids, dtype=np.int64))
        self._added_vectors.append(embeddings)

    # -- commit ------------------------------------------------------------------------
    def _vector_index(self, n_vectors: int):
        kind = vectors.choose_kind(self._index_settings, n_vectors)
        dim = self._embedder.dimension
        if self.previous is not None and self.previous.index_kind == kind:
            index = vectors.read(store.committed_version_dir(self.directory) / store.VECTORS)
            removable = vectors.supports_removal(index)
            if removable or not self._removed_ids:
                if self._removed_ids:
                    index.remove_ids(np.asarray(self._removed_ids, dtype=np.int64))
                for ids, vecs in zip(self._added_ids, self._added_vectors):
                    if len(ids):
                        index.add_with_ids(vecs, ids)
                return kind, index
        # A new kind, or removals HNSW cannot do in place: rebuild from the stored vectors.
        rows = self._conn.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return kind, vectors.build(kind, dim, ids, matrix, self._index_settings)

    def commit(self) -> store.Manifest | None:
        """Publish the staged state as a new version. None when nothing changed."""
        if not self.has_changes():
            return self.previous
        counts = {
            name: self._conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
            for name in ("sources", "documents", "chunks")
        }
        self._conn.commit()
        crashpoint("chunks-written")
        kind, index = self._vector_index(counts["chunks"])
        if index.ntotal != counts["chunks"]:
            raise AssertionError(f"vector index holds {index.ntotal} vectors for {counts['chunks']} chunks")
        lexical.build(self._conn, self._staging / store.LEXICAL)
        self._conn.close()
        self._conn = None
        vectors.write(index, self._staging / store.VECTORS)
        manifest = store.Manifest(
            format_version=store.FORMAT_VERSION,
            version_id=self.version_id,
            sequence=self._sequence,
            parent=self.previous.version_id if self.previous else None,
            created_at=store.now(),
            embedding=self._embedder,
            chunking=self._chunking,
            index_kind=kind,
            **counts,
        )
        store.write_atomic(self._staging / store.MANIFEST, manifest.model_dump_json(indent=2).encode())
        for name in (store.CHUNKS_DB, store.VECTORS):
            store.fsync_path(self._staging / name)
        for path in (self._staging / store.LEXICAL).iterdir():
            store.fsync_path(path)
        crashpoint("version-staged")
        final = self.directory / store.VERSIONS / self.version_id
        os.replace(self._staging, final)
        self._staging = None
        store.fsync_path(final.parent)
        crashpoint("version-renamed")
        store.write_atomic(self.directory / store.CURRENT, self.version_id.encode())
        crashpoint("current-swapped")
        store.sweep(self.directory, self._index_settings.keep_versions)
        self.previous = manifest
        return manifest
