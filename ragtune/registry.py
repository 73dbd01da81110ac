"""The adapter registry: a directory of adapters and the record of which are published.

    <root>/registry.json          {"format": 1, "adapters": {name: {"version", "published", "updated"}}}
    <root>/<name>/<version>/      adapter_config.json, adapter_model.safetensors, ragtune_adapter.json
    <root>/.runs/<name>/          training runs (checkpoints), see finetune/train.py

It is the source of truth of what is served: every service reconciles its backend (the
embedded engine, or every vLLM replica) to the published set. `ragtune adapters`, the
service's admin endpoints and `ragtune finetune train --publish` all change it through
this module, under a file lock, with atomic writes. No heavy imports: the service reads it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ragtune.adapter_check import ADAPTER_FILES, AdapterInvalid, validate_adapter
from ragtune.errors import RagtuneError, UsageError
from ragtune.settings import AdapterSettings

FORMAT = 1
STATE_FILE = "registry.json"
METADATA_FILE = "ragtune_adapter.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # matched whole (fullmatch): no trailing newline
KEEP_VERSIONS = 2  # the previous one stays while replicas switch to the new one


class AdapterNotFound(RagtuneError):
    exit_code = 2


class TooManyPublished(UsageError):
    """Publishing one more adapter would pass adapters.max_published."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    version: str
    path: Path
    published: bool
    updated: str
    rank: int | None = None
    base_model: str | None = None
    metadata: dict | None = None

    def as_dict(self) -> dict:
        return {
            "name": self.name, "version": self.version, "path": str(self.path), "published": self.published,
            "updated": self.updated, "rank": self.rank, "base_model": self.base_model,
        }


def lineage_warning(info: AdapterInfo, index_version: str | None) -> str | None:
    """Why an adapter trained with retrieval may not fit the index it is served over: its
    training prompts held passages of other index versions. None when it fits (or was not
    trained with retrieval, or `info` was read without details)."""
    metadata = info.metadata or {}
    versions = metadata.get("index_versions") or []
    if not metadata.get("retrieval_aware") or not versions or index_version is None or index_version in versions:
        return None
    return (f"adapter {info.name!r} was trained with retrieval over index version {', '.join(versions)}, and the index "
            f"is now at {index_version}: its training prompts held other passages. Retrain it with "
            "`ragtune finetune train --with-retrieval` for them to match")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise AdapterInvalid(
            f"adapter name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


__all__ = ["ADAPTER_FILES", "AdapterInvalid", "AdapterNotFound", "Registry", "check_name", "validate_adapter"]


class Registry:
    """`base_dir`: the base model's directory, where known, to check adapters' layers and shapes against."""

    def __init__(self, settings: AdapterSettings, base_model: str, base_dir: Path | None = None):
        self.root = Path(settings.dir)
        self.settings = settings
        self.base_model = base_model
        self.base_dir = base_dir

    def validate(self, path: Path, shown: str | None = None) -> dict:
        return validate_adapter(path, self.base_model, self.settings.max_rank, self.base_dir, shown)

    # -- state ------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def _read(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"format": FORMAT, "adapters": {}}
        except ValueError as exc:
            raise AdapterInvalid(f"{self.state_path} is corrupt ({exc}); restore it or remove it and re-add adapters") from None
        if state.get("format") != FORMAT:
            raise AdapterInvalid(f"{self.state_path} has format {state.get('format')}; this ragtune reads {FORMAT}")
        return state

    def _write(self, state: dict) -> None:
        tmp = self.state_path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read()
                yield state
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def version_path(self, name: str, version: str) -> Path:
        path = (self.root / check_name(name) / version).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise AdapterInvalid(f"adapter path {path} escapes the registry root {self.root}")
        return path

    def stamp(self) -> float:
        """Changes whenever the registry does (cheap to poll)."""
        try:
            return self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    # -- queries ----------------------------------------------------------------------
    def _info(self, name: str, entry: dict, details: bool = False) -> AdapterInfo:
        path = self.version_path(name, entry["version"])
        config, metadata = {}, None
        if details:
            try:
                config = json.loads((path / "adapter_config.json").read_text())
                metadata = json.loads((path / METADATA_FILE).read_text()) if (path / METADATA_FILE).exists() else None
            except (OSError, ValueError):
                pass
        return AdapterInfo(
            name, entry["version"], path, entry["published"], entry["updated"],
            config.get("r"), config.get("base_model_name_or_path"), metadata,
        )

    def list(self, details: bool = False) -> list[AdapterInfo]:
        state = self._read()
        return [self._info(n, e, details) for n, e in sorted(state["adapters"].items())]

    def get(self, name: str, details: bool = True) -> AdapterInfo:
        entry = self._read()["adapters"].get(check_name(name))
        if entry is None:
            raise AdapterNotFound(f"no adapter named {name!r} in the registry (adapters.dir); `ragtune adapters list` shows them")
        return self._info(name, entry, details)

    def published(self) -> dict[str, Path]:
        """name -> directory of the published version: what every backend should serve."""
        state = self._read()
        return {n: self.version_path(n, e["version"]) for n, e in sorted(state["adapters"].items()) if e["published"]}

    # -- changes ----------------------------------------------------------------------
    def add(self, name: str, source: Path, publish: bool | None = None, shown: str | None = None) -> AdapterInfo:
        """Copy a validated adapter in as the newest version of `name`. `publish=None` keeps the
        published state, so retraining a published adapter updates what is served. `shown`: how
        errors name the source (an upload, not where it waits on the server)."""
        check_name(name)
        config = self.validate(source, shown)
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        target = self.version_path(name, version)
        staging = target.with_name(f".{version}.tmp")
        staging.mkdir(parents=True)
        for file in (*ADAPTER_FILES, METADATA_FILE):  # what was validated, nothing else (no symlinks followed)
            if (Path(source) / file).is_file() and not (Path(source) / file).is_symlink():
                shutil.copyfile(Path(source) / file, staging / file)
        if json.loads((staging / ADAPTER_FILES[0]).read_text()) != config:  # a regex target_modules, resolved
            (staging / ADAPTER_FILES[0]).write_text(json.dumps(config, indent=2))
        staging.rename(target)  # a version directory is whole or absent
        try:
            with self._locked() as state:
                previous = state["adapters"].get(name, {})
                published = previous.get("published", False) if publish is None else publish
                if published:
                    self._check_room(state, name)
                state["adapters"][name] = {"version": version, "published": published, "updated": _now()}
                self._write(state)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        self._prune(name, keep={version, previous.get("version")})
        return self.get(name)

    def set_published(self, name: str, published: bool) -> AdapterInfo:
        with self._locked() as state:
            entry = state["adapters"].get(check_name(name))
            if entry is None:
                raise AdapterNotFound(f"no adapter named {name!r} in the registry (adapters.dir); `ragtune adapters list` shows them")
            if published:  # refuse to publish what cannot be served (the files may have changed since)
                self._check_room(state, name)
                self.validate(self.version_path(name, entry["version"]), f"adapter {name!r} version {entry['version']}")
            entry.update(published=published, updated=_now())
            self._write(state)
        return self.get(name)

    def _check_room(self, state: dict, name: str) -> None:
        """One more published adapter must stay within adapters.max_published (each costs every backend memory)."""
        others = sorted(n for n, e in state["adapters"].items() if e["published"] and n != name)
        limit = self.settings.max_published
        if len(others) >= limit:
            raise TooManyPublished(
                f"{len(others)} adapters are published already, the limit (setting adapters.max_published, "
                f"RAGTUNE_ADAPTERS__MAX_PUBLISHED) is {limit}: unpublish one first (`ragtune adapters unload NAME`, "
                f"or POST /admin/adapters/NAME/unload); published: {', '.join(others)}"
            )

    def delete(self, name: str) -> None:
        with self._locked() as state:
            if state["adapters"].pop(check_name(name), None) is None:
                raise AdapterNotFound(f"no adapter named {name!r} in the registry (adapters.dir)")
            self._write(state)  # unpublished first: services stop serving it before the files go
        shutil.rmtree(self.root / name, ignore_errors=True)

    def _prune(self, name: str, keep: set) -> None:
        versions = sorted((p for p in (self.root / name).iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        for old in versions[:-KEEP_VERSIONS]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
