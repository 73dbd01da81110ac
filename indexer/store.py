"""The index directory: the contract between the indexer (writer) and the service (reader).

    <index dir>/
      CURRENT                  the committed version id (replaced atomically)
      versions/<version id>/   one immutable committed version
        manifest.json          format version, embedder identity, chunker settings, stats
        chunks.sqlite          sources, documents and chunks (row id = FAISS vector id)
        vectors.faiss          IndexIDMap2 over unit vectors (inner product)
      staging/                 versions being written; never read, swept by the next writer
      .lock                    held (flock) by the one writer

A commit writes a whole new version under staging/, fsyncs it, renames it into
versions/ and only then swaps CURRENT. A process killed at any point leaves CURRENT
naming the previous complete version. Readers open one version and keep it until they
choose to reload, so a commit never changes what a request in flight is reading.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from pydantic import BaseModel

from ragtune.errors import IndexCorrupt, IndexIncompatible, IndexNotFound

FORMAT_VERSION = 1
CURRENT = "CURRENT"
VERSIONS = "versions"
STAGING = "staging"
MANIFEST = "manifest.json"
CHUNKS_DB = "chunks.sqlite"
VECTORS = "vectors.faiss"
LEXICAL = "bm25"  # added in ragtune 0.1 without a format bump: readers build it when missing

SCHEMA = """
CREATE TABLE sources (
    source_id TEXT PRIMARY KEY, path TEXT NOT NULL, content_hash TEXT NOT NULL,
    size INTEGER NOT NULL, indexed_at TEXT NOT NULL, warnings TEXT NOT NULL DEFAULT '[]');
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY, source_id TEXT NOT NULL REFERENCES sources ON DELETE CASCADE,
    title TEXT, metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL, source_id TEXT NOT NULL, position INTEGER NOT NULL,
    text TEXT NOT NULL, headings TEXT NOT NULL, context TEXT NOT NULL, page INTEGER,
    token_count INTEGER NOT NULL, content_hash TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX chunks_by_source ON chunks(source_id);
CREATE INDEX chunks_by_doc ON chunks(doc_id);
CREATE INDEX documents_by_source ON documents(source_id);
"""


class EmbedderIdentity(BaseModel):
    name: str
    dimension: int
    fingerprint: str
    max_seq_length: int
    backend: str = "torch"  # what ran the model (indexes made before there was a choice: torch)


class Manifest(BaseModel):
    format_version: int
    version_id: str
    sequence: int
    parent: str | None
    created_at: str
    embedding: EmbedderIdentity
    chunking: dict
    index_kind: str
    sources: int
    documents: int
    chunks: int


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_version_id(sequence: int) -> str:
    return f"{sequence:06d}-{secrets.token_hex(4)}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def current_version(directory: Path) -> str | None:
    try:
        return (directory / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def read_manifest(version_dir: Path) -> Manifest:
    try:
        raw = json.loads((version_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"cannot read {version_dir / MANIFEST}: {exc}; rebuild the index") from exc
    found = raw.get("format_version")
    if not isinstance(found, int) or found > FORMAT_VERSION:
        raise IndexIncompatible(
            f"index at {version_dir.parent.parent} has format version {found}, newer than this "
            f"ragtune reads ({FORMAT_VERSION}); upgrade ragtune (pip install -U ragtune)"
        )
    return Manifest.model_validate(raw)


def committed_version_dir(directory: Path) -> Path:
    """The directory of the committed version, or a clear error when there is none."""
    version = current_version(directory)
    if version is None:
        raise IndexNotFound(f"no index at {directory}: create one with `ragtune index add PATH --index-dir {directory}`")
    path = directory / VERSIONS / version
    if not path.is_dir():
        raise IndexCorrupt(f"{directory / CURRENT} names version {version}, which is missing; rebuild the index")
    return path


def check_embedder(manifest: Manifest, identity: EmbedderIdentity, directory: Path) -> None:
    built = manifest.embedding
    if built.fingerprint != identity.fingerprint or built.dimension != identity.dimension:
        raise IndexIncompatible(
            f"index at {directory} was built with embedding model {built.name} (dim {built.dimension}) "
            f"but {identity.name} (dim {identity.dimension}) is configured; set RAGTUNE_EMBEDDING__MODEL "
            "to the index's model, or use another --index-dir for the new model"
        )
    if built.backend != identity.backend:
        raise IndexIncompatible(
            f"index at {directory} was embedded with embedding.backend {built.backend}, but {identity.backend} is "
            f"configured: their vectors differ slightly, so one index keeps one. Set RAGTUNE_EMBEDDING__BACKEND="
            f"{built.backend}, or rebuild the index (another --index-dir) with {identity.backend}"
        )


def connect_readonly(path: Path) -> sqlite3.Connection:
    # immutable=1: committed versions never change, so SQLite needs no locks to read them.
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def stage_database(previous: Path | None, target: Path) -> sqlite3.Connection:
    """A writable copy of the previous version's chunk store (or a new, empty one)."""
    conn = sqlite3.connect(target)
    if previous is None:
        conn.executescript(SCHEMA)
    else:
        source = sqlite3.connect(f"file:{previous}?mode=ro", uri=True)
        try:
            source.backup(conn)
        finally:
            source.close()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.row_factory = sqlite3.Row
    return conn


def sweep(directory: Path, keep_versions: int) -> None:
    """Delete staging leftovers, orphans, and versions older than the newest `keep_versions`.

    Called only under the writer's lock. An orphan is a version newer than CURRENT: a commit
    killed between its rename and the pointer swap. No reader ever saw it, and it must not take
    a retention slot from a version readers may still hold."""
    shutil.rmtree(directory / STAGING, ignore_errors=True)
    current = current_version(directory)
    versions = sorted((p for p in (directory / VERSIONS).iterdir() if p.is_dir()), key=lambda p: p.name)
    committed = [p for p in versions if current is not None and p.name <= current]
    keep = {p.name for p in committed[-keep_versions:]} | {current}
    for path in versions:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
