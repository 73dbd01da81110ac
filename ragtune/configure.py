"""Reading the settings for a command, and logging: what every entry point does first.

A bad value is one line naming the variable and what to do (not a validation traceback), and
only the sections a command uses can stop it: a bad fine-tuning setting does not keep
`ragtune index stats` from running. A variable that looks like a setting but is none (a typo)
is warned about, since pydantic-settings ignores it silently.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from typing import Iterable

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError as SourceError

from ragtune.errors import UsageError
from ragtune.settings import Settings

log = logging.getLogger("ragtune.settings")
PREFIX, DELIMITER = "RAGTUNE_", "__"
NOISY = ("httpx", "httpcore", "urllib3", "filelock", "sentence_transformers", "transformers", "bm25s", "faiss",
         "huggingface_hub", "torch", "peft", "multipart", "asyncio")


class SettingsError(UsageError):
    """A setting's value cannot be used."""


def variable(location: tuple) -> str:
    return PREFIX + DELIMITER.join(str(part).upper() for part in location)


KEYED = "key_collections"  # a mapping whose keys are API keys


def _describe(error: dict) -> str:
    """One line for a bad value, which never echoes an API key: neither a key-holding setting's
    value nor a key_collections entry's key (its path would name it)."""
    message = error["msg"].removeprefix("Value error, ")
    location, value = tuple(error["loc"]), error.get("input")
    if KEYED in location:
        location, message = location[: location.index(KEYED) + 1], f"a key's entry: {message}"
    secret = any("key" in str(part) for part in location)
    shown = f"={value!r}" if not secret and isinstance(value, (str, int, float, bool)) and len(str(value)) <= 80 else ""
    return f"{variable(location)}{shown}: {message}"


def _not_json() -> list[str]:
    """The variables holding a list or a mapping whose value is not JSON."""
    bad = []
    for name, value in os.environ.items():
        section, _, field = name.removeprefix(PREFIX).lower().partition(DELIMITER)
        info = Settings.model_fields.get(section)
        model = info.annotation if info else None
        kind = getattr(model, "model_fields", {}).get(field) if field else info
        if name.startswith(PREFIX) and kind is not None and str(kind.annotation).split("[")[0] in ("list", "dict", "set"):
            try:
                json.loads(value)
            except ValueError:
                bad.append(name)
    return sorted(bad)


def _section(name: str) -> str:
    return name.removeprefix(PREFIX).lower().partition(DELIMITER)[0]


def load_settings(sections: Iterable[str] | None = None, warn: bool = True, **overrides: object) -> Settings:
    """The settings tree from the environment and `.env`. `sections`: those the command uses (None:
    all); a bad value elsewhere is warned about (`warn`) and that section left at its defaults."""
    used = set(sections) if sections is not None else set(Settings.model_fields)
    try:
        return Settings(**overrides)
    except SourceError:  # a value that must be JSON (a list, a section) is not: read before validation
        bad = _not_json()
        if not bad or any(_section(name) in used for name in bad):
            raise SettingsError(f"{', '.join(bad) or 'a list or section variable'} is not JSON: lists and sections are, "
                                "e.g. RAGTUNE_SERVICE__API_KEYS='[\"key\"]'") from None
        for name in bad if warn else ():
            log.warning("ignored, as this command does not use it: %s is not JSON", name)
        hidden = {name: os.environ.pop(name) for name in bad}
        try:
            return load_settings(sections, warn, **overrides)
        finally:
            os.environ.update(hidden)
    except ValidationError as exc:
        problems = exc.errors(include_url=False)
    blocking = [p for p in problems if p["loc"][0] in used]
    if blocking:
        more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
        raise SettingsError(f"{_describe(blocking[0])}{more}; fix or unset it")
    for problem in problems if warn else ():
        log.warning("ignored, as this command does not use it: %s", _describe(problem))
    defaults = {p["loc"][0]: Settings.model_fields[p["loc"][0]].default_factory() for p in problems}
    return Settings(**{**overrides, **defaults})


def known_variables() -> set[str]:
    """Every variable a setting is read from: sections (as JSON) and their fields, nested too."""
    names: set[str] = set()

    def walk(model: type[BaseModel], path: tuple) -> None:
        for name, info in model.model_fields.items():
            names.add(variable((*path, name)))
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, (*path, name))

    walk(Settings, ())
    return names


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """RAGTUNE_ variables shaped like a setting (SECTION__FIELD) that are none, with a guess."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    found = []
    for name in sorted(environ):
        if name.startswith(PREFIX) and DELIMITER in name and name.upper() not in known:
            guess = difflib.get_close_matches(name.upper(), known, n=1)
            found.append(f"{name} is not a setting" + (f" (did you mean {guess[0]}?)" if guess else "") + "; it is ignored")
    return found


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", format: str = "text") -> None:
    """Once per process: one handler on stderr; ragtune at `level`, libraries at warnings (all at
    DEBUG). uvicorn's loggers come through the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines() if format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    if level != "DEBUG":  # a library that sets its own logger's level when imported (bm25s does) stays quiet
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name.split(".")[0] not in NOISY)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def serving_threads() -> None:
    """For a process that answers requests (`ragtune serve`, `ragtune ask`): idle OpenMP threads
    sleep at once instead of spinning for the next parallel region. Between torch's operations
    the engine's thread, the event loop and the embedding run Python; spinning threads hold the
    cores they need. bench/ask.py measured it on /ask end to end (bench/RESULTS.md). libgomp
    reads it once, when it loads, so this must run before torch or faiss is imported; a value
    the user set wins."""
    if "torch" not in sys.modules and "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
