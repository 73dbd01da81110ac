"""Ingest files into an index: discover, load, chunk, embed, commit once.

Unchanged files (same content hash) cost a read and a hash. Changed files have their old
chunks replaced; files gone from a directory that is ingested again are removed. A file
that cannot be read is reported with its reason and skipped (a previously indexed
version of it stays), and the rest still commits.
"""

from __future__ import annotations

import glob
import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from indexer.chunking import Chunk, Chunker
from indexer.embedder import Embedder
from indexer.loaders import SUPPORTED_SUFFIXES, Document, LoadError
from indexer.parsing import IsolatedParser
from indexer.store import EmbedderIdentity
from indexer.writer import IndexWriter
from ragtune.errors import UsageError
from ragtune.settings import Settings

EMBED_GROUP = 1024  # chunks embedded per call: large enough for length-sorted batches


EMBED_STEP = 128  # chunks per embedding call within a group: progress is reported after each


class Progress(Protocol):
    def start(self, files: int) -> None: ...
    def read(self, chunks: int) -> None:
        """One more file read; `chunks` of it wait to be embedded."""
    def embedded(self, chunks: int) -> None: ...


class _NoProgress:
    def start(self, files: int) -> None:
        pass

    def read(self, chunks: int) -> None:
        pass

    def embedded(self, chunks: int) -> None:
        pass


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    version_id: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Nothing at all could be indexed."""
        return bool(self.skipped) and not (self.added or self.replaced or self.unchanged or self.removed)

    def as_dict(self) -> dict:
        return {
            "added": self.added, "replaced": self.replaced, "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "warnings": [{"path": p, "message": m} for p, m in self.warnings],
            "chunks_added": self.chunks_added, "chunks_removed": self.chunks_removed,
            "version_id": self.version_id, "seconds": round(self.seconds, 3),
        }


@dataclass
class _Pending:
    source_id: str
    path: str
    content_hash: str
    size: int
    documents: list[Document]
    chunks: list[Chunk]
    warnings: list[str]
    replacing: bool


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def discover(paths: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Files to ingest, and the directories they were found under (for pruning).

    A path that does not exist (or a glob that matches nothing) is a usage error, raised
    before any work is done.
    """
    named = named_files(paths)
    return list(named), sorted({d for _, d in named.values() if d is not None})


def _base(raw: str, match: Path) -> Path:
    """What an id is relative to for a path as the user gave it: a directory's parent (ids start with
    the directory's name), a file's own directory, the parent of a glob's fixed part."""
    if not glob.has_magic(raw):
        return match.absolute().parent
    parts = Path(raw).parts
    fixed = parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))]
    return Path(*fixed).absolute().parent if fixed else Path.cwd()


def named_files(paths: Iterable[str]) -> dict[Path, tuple[Path, Path | None]]:
    """Each file to ingest -> (what its id is relative to, the directory it was found under)."""
    files: dict[Path, tuple[Path, Path | None]] = {}
    for raw in paths:
        matches = [Path(m) for m in sorted(glob.glob(raw, recursive=True))] if glob.has_magic(raw) else [Path(raw)]
        if not matches or not all(m.exists() or m.is_symlink() for m in matches):
            raise UsageError(f"path not found: {raw}")
        for match in matches:
            base = _base(raw, match)
            if match.is_dir():
                root = match.resolve()
                for child in sorted(root.rglob("*")):
                    if (child.is_file() or child.is_symlink()) and not _is_hidden(child, root):
                        files.setdefault(child.absolute(), (match.absolute().parent, root))
            else:
                files.setdefault(match.absolute(), (base, None))
    return files


def matching_sources(sources: list[tuple[str, str]], target: str, exact: bool = False) -> list[tuple[str, str]]:
    """The (source id, path) pairs a removal target names: a source id, a file path, or a directory
    (`exact`: the source id alone, as a request over HTTP names it)."""
    if exact:
        return [(sid, p) for sid, p in sources if sid == target]
    as_path = Path(target).absolute()
    return [(sid, p) for sid, p in sources
            if sid == target or Path(p) == as_path or Path(p).is_relative_to(as_path) or sid.startswith(target.rstrip("/") + "/")]


class Ingestor:
    def __init__(self, settings: Settings, embedder: Embedder):
        self.settings = settings
        self.embedder = embedder
        self.chunker = Chunker(embedder.tokenizer, embedder.max_text_tokens, settings.chunking)
        self.identity = EmbedderIdentity(**embedder.identity())

    def writer(self, directory: Path) -> IndexWriter:
        return IndexWriter(directory, self.settings.index, self.settings.chunking, self.identity)

    def source_id(self, path: Path, root: Path | None, base: Path | None = None) -> str:
        """A file's id: its path under `root` (--root); else under `base`, what the user named it by
        (see `named_files`); else its absolute path."""
        resolved = path.resolve() if not path.is_symlink() else path.absolute()
        if root is not None:
            try:
                return resolved.relative_to(root.resolve()).as_posix()
            except ValueError:
                raise UsageError(f"{path} is not under --root {root}; give a root that contains every path") from None
        if base is not None:
            try:
                return path.absolute().relative_to(base).as_posix()
            except ValueError:
                pass
        return resolved.as_posix()

    def _ids(self, named: dict[Path, tuple[Path, Path | None]], root: Path | None, writer: IndexWriter) -> dict[Path, str]:
        """Each file's source id. A file the index already holds keeps the id it has (indexes made when ids
        were absolute paths go on with them); two files that would share an id are a usage error."""
        sources = writer.sources()
        known = {Path(stored): sid for sid, stored in sources}
        taken = {sid: Path(stored) for sid, stored in sources}
        ids: dict[Path, str] = {}
        for path, (base, _) in named.items():
            sid = known.get(path)
            if sid is None:
                sid = self.source_id(path, root, base)
                other = taken.get(sid)
                if root is None and other is not None and other != path and other.exists():
                    sid = self.source_id(path, None)  # the name is another file's, which is still there
            if sid in ids.values():
                first = next(p for p, i in ids.items() if i == sid)
                raise UsageError(f"{first} and {path} would both be known as {sid!r}; give --root DIR to name files by "
                                 "their path under DIR")
            ids[path] = sid
        return ids

    def ingest(
        self, paths: list[str], directory: Path, root: Path | None = None, progress: Progress | None = None,
        writer: IndexWriter | None = None, by_id: bool = False,
    ) -> IngestReport:
        """`writer`: one already open on `directory` (holding its lock), which the caller closes.
        `by_id`: files are known by their source ids (relative to `root`) in the index and the
        report, never by where they lie on this machine (uploads over HTTP)."""
        progress = progress or _NoProgress()
        started = time.perf_counter()
        named = named_files(paths)
        directories = sorted({d for _, d in named.values() if d is not None})
        report = IngestReport()
        progress.start(len(named))
        parser = IsolatedParser(self.settings.index, self.settings.records)
        with nullcontext(writer) if writer is not None else self.writer(directory) as writer, parser:
            seen: set[str] = set()
            pending: list[_Pending] = []
            for path, source_id in self._ids(named, root, writer).items():
                seen.add(source_id)
                item = self._prepare(path, source_id, writer, report, by_id, parser)
                progress.read(len(item.chunks) if item else 0)
                if item is not None:
                    pending.append(item)
                    if sum(len(p.chunks) for p in pending) >= EMBED_GROUP:
                        self._flush(pending, writer, report, progress)
            self._flush(pending, writer, report, progress)
            for source_id, stored_path in writer.sources():
                stored = Path(stored_path)
                gone = source_id not in seen and not stored.exists()
                if gone and any(stored.is_relative_to(d) for d in directories):
                    report.chunks_removed += writer.delete_source(source_id)
                    report.removed.append(stored_path)
            manifest = writer.commit()
            report.version_id = manifest.version_id if manifest else None
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(
        self, path: Path, source_id: str, writer: IndexWriter, report: IngestReport, by_id: bool, parser: IsolatedParser,
    ) -> _Pending | None:
        shown = source_id if by_id else str(path)
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            report.skipped.append((shown, f"unsupported file type {path.suffix or '(none)'!r}"))
            return None
        limit = self.settings.index.max_file_bytes
        try:
            size = path.stat().st_size
            if size > limit:
                report.skipped.append((shown, f"{size:,} bytes, over the limit of {limit:,} (setting index.max_file_bytes)"))
                return None
            data = path.read_bytes()
        except OSError as exc:
            report.skipped.append((shown, f"unreadable: {exc.strerror or type(exc).__name__}"))
            return None
        content_hash = hashlib.sha256(data).hexdigest()
        previous = writer.source_hash(source_id)
        if previous == content_hash:
            writer.move_source(source_id, shown if by_id else str(path.absolute()))
            report.unchanged.append(shown)
            return None
        try:
            documents, warnings = parser.load(path, data, source_id)
        except LoadError as exc:
            kept = " (the previously indexed version is kept)" if previous else ""
            report.skipped.append((shown, f"{exc}{kept}"))
            return None
        report.warnings.extend((shown, w) for w in warnings)
        chunks = [chunk for document in documents for chunk in self.chunker.chunk(document)]
        if not chunks:
            report.skipped.append((shown, "no text content"))
            return None
        return _Pending(source_id, shown if by_id else str(path.absolute()), content_hash, len(data), documents, chunks, warnings, previous is not None)

    def _flush(self, pending: list[_Pending], writer: IndexWriter, report: IngestReport, progress: Progress) -> None:
        if not pending:
            return
        inputs = [chunk.embedding_input for item in pending for chunk in item.chunks]
        embeddings = self._embed(inputs, progress)
        offset = 0
        for item in pending:
            vecs = embeddings[offset : offset + len(item.chunks)]
            offset += len(item.chunks)
            writer.put_source(item.source_id, item.path, item.content_hash, item.size, item.documents, item.chunks, np.ascontiguousarray(vecs), item.warnings)
            (report.replaced if item.replacing else report.added).append(item.path)
            report.chunks_added += len(item.chunks)
        pending.clear()

    def _embed(self, inputs: list[str], progress: Progress) -> np.ndarray:
        """The group's vectors, embedded a step at a time (progress after each), longest first so
        each step's batches pad little, as one call would sort them."""
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        vectors = np.zeros((len(inputs), self.embedder.dimension), dtype=np.float32)
        for start in range(0, len(order), EMBED_STEP):
            step = order[start : start + EMBED_STEP]
            vectors[step] = self.embedder.embed([inputs[i] for i in step])
            progress.embedded(len(step))
        return vectors

    def remove(self, targets: list[str], directory: Path, writer: IndexWriter | None = None, exact: bool = False) -> IngestReport:
        """Remove sources by id, by path, or everything under a directory path; or one document
        by its id (a JSONL record: "faq.jsonl#q1"). `exact`: by a source or document id only."""
        report = IngestReport()
        with nullcontext(writer) if writer is not None else self.writer(directory) as writer:
            sources = writer.sources()
            for target in targets:
                matched = matching_sources(sources, target, exact)
                if not matched:
                    removed = writer.delete_document(target)  # a document of a source, by its id
                    if removed is None:
                        report.skipped.append((target, "not in the index"))
                    else:
                        report.chunks_removed += removed
                        report.removed.append(target)
                for sid, p in matched:
                    if p not in report.removed:
                        report.chunks_removed += writer.delete_source(sid)
                        report.removed.append(p)
            manifest = writer.commit()
            report.version_id = manifest.version_id if manifest else None
        return report
