"""The generation interface every backend implements, and the values it exchanges."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Protocol

from ragtune.errors import BackendError

STRUCTURED_FIELDS = ("response_format", "tools", "tool_choice")  # OpenAI fields whose answers are JSON, not prose


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    default_stop: bool = True  # the request named no stop of its own: an answer from passages ends at prompt.stop
    seed: int | None = None
    repetition_penalty: float = 1.0  # vLLM's and transformers' sense: > 1 discourages tokens already in prompt or answer
    frequency_penalty: float = 0.0  # OpenAI's sense: subtracted from a token's logit per time it is in the answer so far
    presence_penalty: float = 0.0  # once, if it is in the answer so far (the prompt does not count)
    model: str | None = None  # an adapter name, or None for the base model
    # An answer from passages in prose, naming no adapter (so `model` is None; the pipeline sets it): a local
    # engine answers it with its answer model (generation.answer_adapter merged in) where it has one.
    grounded: bool = False
    # OpenAI fields passed to the backend as they are (tools, response_format, logprobs...), for a
    # backend that honours them (vLLM); its choices then come back unchanged in `Completion.choices`.
    extra: dict = field(default_factory=dict)

    @classmethod
    def defaults(cls, generation, **fields) -> GenerationParams:
        """The settings' decoding defaults (generation.max_answer_tokens, temperature, penalties), `fields` over them."""
        base = dict(max_tokens=generation.max_answer_tokens, temperature=generation.temperature,
                    repetition_penalty=generation.repetition_penalty, frequency_penalty=generation.frequency_penalty)
        return cls(**{**base, **fields})


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


class TokenCounter(Protocol):
    """What packing needs from a model: its window, and how many tokens a prompt and a text take."""

    context_window: int

    def count_chat_tokens(self, messages: Messages) -> int:
        """Tokens of the whole prompt (chat template included) the model would be given."""

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text alone."""


class Generator(TokenCounter, Protocol):
    """A generation backend. Implement it by subclassing `Backend`: only `stream` is required."""

    model_name: str

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion: ...

    def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]: ...

    async def ready(self) -> bool: ...

    async def first_token_logprobs(self, messages: Messages, model: str | None, top: int = 20) -> list[tuple[str, float]]:
        """The `top` likeliest first tokens of the reply, as (text, log probability): what the answerability
        check (service/answerable.py) judges from."""

    def models(self) -> list[str]:
        """The base model's name, then every adapter a request may name."""

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        """Serve exactly these adapters (name -> directory): load new or changed ones, unload the rest."""

    async def close(self) -> None: ...


class Backend(abc.ABC):
    """The defaults of a `Generator`: a backend writes `stream` (and counts tokens); `generate`
    collects the stream; it is always ready, serves no adapters and holds nothing to close."""

    model_name: str
    context_window: int

    @abc.abstractmethod
    def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        """The answer's text in pieces; the last event has `done` set and the completion."""

    @abc.abstractmethod
    def count_chat_tokens(self, messages: Messages) -> int: ...

    @abc.abstractmethod
    def count_text_tokens(self, texts: list[str]) -> list[int]: ...

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion:
        async for event in self.stream(messages, params):
            if event.done:
                return event.completion
        raise RuntimeError(f"{type(self).__name__}.stream ended without a final event")

    async def ready(self) -> bool:
        return True

    async def first_token_logprobs(self, messages: Messages, model: str | None, top: int = 20) -> list[tuple[str, float]]:
        """One greedy token with OpenAI's logprobs, from an engine that computes them (transformers) or passes
        them through (vLLM)."""
        params = GenerationParams(max_tokens=1, default_stop=False, model=model, extra={"logprobs": True, "top_logprobs": top})
        completion = await self.generate(messages, params)
        content = completion.logprobs
        if content is None and completion.choices:
            content = (completion.choices[0].get("logprobs") or {}).get("content")
        if not content:
            raise BackendError(f"the {type(self).__name__} backend returned no log probabilities for the answerability check")
        return [(entry["token"], float(entry["logprob"])) for entry in content[0].get("top_logprobs") or [content[0]]]

    def models(self) -> list[str]:
        return [self.model_name]

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        return AdapterSyncReport(failed={name: f"the {type(self).__name__} backend serves no adapters" for name in desired})

    async def close(self) -> None:
        pass
