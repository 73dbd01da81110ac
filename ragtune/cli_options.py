"""Options and helpers that every part's CLI shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

from ragtune.configure import load_settings
from ragtune.settings import Settings

IndexDir = Annotated[
    Optional[Path], typer.Option("--index-dir", "-i", help="Index directory [default: setting index.dir, env RAGTUNE_INDEX__DIR].")
]

CollectionName = Annotated[
    Optional[str], typer.Option("--collection", "-c", help="Collection [default: the default one, at --index-dir].")
]

# The settings sections each kind of command reads: a bad value elsewhere does not stop it.
INDEXING = ("index", "embedding", "chunking", "records", "log")
QUERYING = ("index", "embedding", "retrieval", "prompt", "fewshot", "generation", "service", "adapters", "log")
TRAINING = (*QUERYING, "finetune")


def settings_for(index_dir: Path | None, sections: Iterable[str] | None = None) -> Settings:
    """The settings tree (the `sections` a command uses validated), with the index directory a
    command was given (if any)."""
    settings = load_settings(sections)
    if index_dir is not None:
        settings.index.dir = index_dir
    return settings
