"""Options and helpers that every part's CLI shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ragtune.settings import Settings, get_settings

IndexDir = Annotated[
    Optional[Path], typer.Option("--index-dir", "-i", help="Index directory [default: setting index.dir, env RAGTUNE_INDEX__DIR].")
]


def settings_for(index_dir: Path | None) -> Settings:
    """The settings tree, with the index directory a command was given (if any)."""
    settings = get_settings()
    if index_dir is not None:
        settings.index.dir = index_dir
    return settings
