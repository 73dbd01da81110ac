"""The generation interface every backend implements, and the values it exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    model: str | None = None  # an adapter name, or None for the base model


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    model: str


@dataclass
class StreamEvent:
    """A piece of text; the last event has `done` set with the counts and finish reason."""

    text: str = ""
    done: bool = False
    completion: Completion | None = field(default=None)


Messages = list[dict[str, str]]


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

    def models(self) -> list[str]: ...

    async def close(self) -> None: ...
