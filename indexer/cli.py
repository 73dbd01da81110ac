"""`ragtune index ...`: parse, call the indexer, print. No logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from indexer import collections
from ragtune.cli_options import INDEXING, CollectionName, IndexDir, settings_for
from ragtune.errors import UsageError
from ragtune.settings import IndexSettings, Settings

app = typer.Typer(help="Build and inspect the document index.", no_args_is_help=True, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)

INDEX_ONLY = ("index", "log")
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _ingestor(settings: Settings, *others: IndexSettings):
    """`others`: where else to look for the backend an `auto` embedder keeps (a new collection follows the rest)."""
    from indexer.embedder import load_embedder
    from indexer.ingest import Ingestor

    with err.status("Loading the embedding model..."):
        return Ingestor(settings, load_embedder(settings.embedding, settings.index, *others))


class _RichProgress:
    """Two bars: files read, and chunks embedded (of those read so far) with chunks/s and ETA."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._files = self._chunks = None

    def start(self, files: int) -> None:
        self._files = self._progress.add_task("Reading", total=files, unit="files")
        self._chunks = self._progress.add_task("Embedding", total=0, unit="chunks")

    def read(self, chunks: int) -> None:
        self._progress.advance(self._files)
        self._progress.update(self._chunks, total=self._progress.tasks[self._chunks].total + chunks)

    def embedded(self, chunks: int) -> None:
        self._progress.advance(self._chunks, chunks)


def _print_report(report, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    for path, reason in report.skipped:
        err.print(f"[yellow]skipped[/] {path}: {reason}")
    for path, message in report.warnings:
        err.print(f"[yellow]warning[/] {path}: {message}")
    out.print(
        f"files: {len(report.added)} added, {len(report.unchanged)} unchanged, {len(report.replaced)} replaced, "
        f"{len(report.removed)} removed, {len(report.skipped)} skipped; chunks: +{report.chunks_added} "
        f"-{report.chunks_removed}; index version {report.version_id or '(none)'} ({report.seconds:.1f}s)"
    )


@app.command()
def add(
    paths: Annotated[list[str], typer.Argument(help="Files, directories (recursive) or glob patterns.")],
    index_dir: IndexDir = None,
    collection: CollectionName = None,
    root: Annotated[
        Optional[Path], typer.Option(help="Make document ids relative to this directory (default: relative to the paths as given: docs/a.md for `docs/`).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Add or update documents. Unchanged files are skipped; changed ones are replaced."""
    from indexer.ingest import discover

    settings = settings_for(index_dir, INDEXING)
    every = settings.index.model_copy()
    collections.choose(settings.index, collection, must_exist=False)  # a new name starts a collection
    discover(paths)  # a path that is not there is said before the embedder loads
    ingestor = _ingestor(settings, every)
    columns = (TextColumn("{task.description:9}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
               TaskProgressColumn(show_speed=True), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
        report = ingestor.ingest(paths, settings.index.dir, root=root, progress=_RichProgress(bar))
    _print_report(report, as_json)
    if report.failed:
        err.print("error: nothing could be indexed (see the reasons above)")
        raise typer.Exit(1)


@app.command()
def remove(
    targets: Annotated[list[str], typer.Argument(help="Document/source ids, file paths, or directories.")],
    index_dir: IndexDir = None,
    collection: CollectionName = None,
    as_json: AsJson = False,
) -> None:
    """Remove documents (their chunks and vectors) from the index."""
    from indexer.ingest import matching_sources
    from indexer.snapshot import IndexSnapshot

    settings = settings_for(index_dir, INDEXING)
    collections.choose(settings.index, collection, must_exist=True)
    snapshot = IndexSnapshot(settings.index.dir)
    sources = [(s["source_id"], s["path"]) for s in snapshot.sources()]
    if not any(matching_sources(sources, t) or snapshot.chunk_ids("d.doc_id = ?", [t]) for t in targets):  # before the embedder loads
        raise UsageError(f"nothing in the index at {settings.index.dir} matches {' '.join(targets)}; `ragtune index list` shows what is there")
    report = _ingestor(settings).remove(targets, settings.index.dir)
    _print_report(report, as_json)
    if not report.removed:
        raise typer.Exit(2)


@app.command("list")
def list_sources(index_dir: IndexDir = None, collection: CollectionName = None, as_json: AsJson = False) -> None:
    """List the indexed source files with their document and chunk counts."""
    from indexer.snapshot import IndexSnapshot

    settings = settings_for(index_dir, INDEX_ONLY)
    collections.choose(settings.index, collection, must_exist=True)
    snapshot = IndexSnapshot(settings.index.dir)
    sources = snapshot.sources()
    if as_json:
        typer.echo(json.dumps(sources, indent=2))
        return
    table = Table("source", "documents", "chunks", "bytes", "indexed at")
    for s in sources:
        table.add_row(s["source_id"], str(s["documents"]), str(s["chunks"]), str(s["size"]), s["indexed_at"])
    out.print(table)


@app.command()
def stats(index_dir: IndexDir = None, collection: CollectionName = None, as_json: AsJson = False) -> None:
    """Show the index version, embedding model, chunking and sizes."""
    from indexer.snapshot import IndexSnapshot

    settings = settings_for(index_dir, INDEX_ONLY)
    collections.choose(settings.index, collection, must_exist=True)
    figures = IndexSnapshot(settings.index.dir).stats()
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    table = Table(show_header=False)
    for key, value in figures.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


@app.command("collections")
def list_collections(index_dir: IndexDir = None, as_json: AsJson = False) -> None:
    """List the collections: the default one (at --index-dir) and those under index.collections_dir."""
    from indexer import store

    settings = settings_for(index_dir, INDEX_ONLY)
    rows = []
    for name in collections.names(settings.index):
        path = collections.directory(settings.index, name)
        manifest = store.read_manifest(store.committed_version_dir(path))
        rows.append({"name": name, "directory": str(path), "index_version": manifest.version_id, "sources": manifest.sources,
                     "chunks": manifest.chunks})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("collection", "directory", "version", "sources", "chunks")
    for row in rows:
        table.add_row(row["name"], row["directory"], row["index_version"], str(row["sources"]), str(row["chunks"]))
    out.print(table)

