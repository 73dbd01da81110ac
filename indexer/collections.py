"""Collections: several named indexes served side by side. The collection `default` is the
index at `index.dir`; any other lives at `index.collections_dir/<name>`. Each is an index
directory like any other (indexer/store.py), written and read the same way."""

from __future__ import annotations

import re
from pathlib import Path

from indexer import store
from ragtune.errors import CollectionNotFound, UsageError
from ragtune.settings import IndexSettings

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit", param="collection")
    return name


def directory(index: IndexSettings, name: str | None) -> Path:
    """Where collection `name` (None: the default) lives, whether it exists yet or not."""
    if name is None or name == DEFAULT:
        return index.dir
    return index.collections_dir / check_name(name)


def names(index: IndexSettings) -> list[str]:
    """The collections that have a committed index: the default first, then by name."""
    found = [DEFAULT] if store.current_version(index.dir) is not None else []
    if index.collections_dir.is_dir():
        found += sorted(p.name for p in index.collections_dir.iterdir()
                        if p.is_dir() and _NAME.fullmatch(p.name) and p.name != DEFAULT and store.current_version(p) is not None)
    return found


def existing(index: IndexSettings, name: str | None) -> Path:
    """The directory of an existing collection; an unknown name is refused with the known ones."""
    path = directory(index, name)
    if name not in (None, DEFAULT) and store.current_version(path) is None:
        known = ", ".join(names(index)) or "none yet"
        raise CollectionNotFound(f"collection {name!r} does not exist; the collections are: {known}", param="collection")
    return path


def choose(index: IndexSettings, name: str | None, must_exist: bool) -> None:
    """Point `index.dir` at collection `name` (a command's --collection): what every command does
    with index.dir then works on that collection."""
    if name is not None:
        index.dir = existing(index, name) if must_exist else directory(index, name)

