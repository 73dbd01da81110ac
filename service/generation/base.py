"""The generation interface every backend implements, and the values it exchanges."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    model: str | None = None  # an adapter name, or None for the base model
    # OpenAI fields passed to the backend as they are (tools, response_format, logprobs...), for a
    # backend that honours them (vLLM); its choices then come back unchanged in `Completion.choices`.
    extra: dict = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    model: str
    choices: list[dict] | None = None  # the backend's own choices, when `params.extra` asked for pass-through
    logprobs: list[dict] | None = None  # OpenAI's logprobs.content, from an engine that computes them itself


@dataclass
class StreamEvent:
    """A piece of text; the last event has `done` set with the counts and finish reason."""

    text: str = ""
    done: bool = False
    completion: Completion | None = field(default=None)
    choices: list[dict] | None = None  # the backend chunk's own choices (pass-through)


Messages = list[dict[str, str]]


@dataclass
class AdapterSyncReport:
    """What one reconcile of a backend to the registry did. Keys name the adapter, prefixed
    with the replica for backends that have several."""

    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"loaded": self.loaded, "unloaded": self.unloaded, "failed": self.failed}

    def failed_for(self, name: str) -> dict[str, str]:
        """Failures of this adapter, on any replica."""
        return {key: why for key, why in self.failed.items() if key == name or key.endswith(f" {name}")}


class Generator(Protocol):
    model_name: str
    context_window: int

    def count_chat_tokens(self, messages: Messages) -> int:
        """Tokens of the whole prompt (chat template included) this backend would send."""

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text alone."""

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion: ...

    def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]: ...

    async def ready(self) -> bool: ...

    def models(self) -> list[str]:
        """The base model's name, then every adapter a request may name."""

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        """Serve exactly these adapters (name -> directory): load new or changed ones, unload the rest."""

    async def close(self) -> None: ...


class TextCountCache:
    """Token counts of texts seen before (passages recur across requests; a count never changes).

    Thread-safe, least recently used out first. `count_missing` gets only the texts not cached.
    """

    def __init__(self, count_missing: Callable[[list[str]], list[int]], size: int = 20_000):
        self._count_missing = count_missing
        self._size = size
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[int]:
        found: dict[str, int] = {}
        with self._lock:
            for text in texts:
                if text in self._counts:
                    found[text] = self._counts[text]
                    self._counts.move_to_end(text)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            counted = dict(zip(missing, self._count_missing(missing)))
            found.update(counted)
            with self._lock:
                self._counts.update(counted)
                while len(self._counts) > self._size:
                    self._counts.popitem(last=False)
        return [found[t] for t in texts]
