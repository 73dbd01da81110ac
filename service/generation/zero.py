"""A backend that answers nothing, at once: the service's own cost with generation taken out.

It counts tokens with a real backend's tokenizer (packing needs real counts) and returns an
empty completion without running a model. `bench/query.py` measures the service's overhead
with it, and the API fuzz test drives the HTTP layer with it. Never a serving choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

from service.generation.base import AdapterSyncReport, Completion, GenerationParams, Generator, Messages, StreamEvent


class ZeroCostGenerator:
    def __init__(self, real: Generator):
        self.real = real
        self.model_name = real.model_name
        self.context_window = real.context_window

    def count_chat_tokens(self, messages: Messages) -> int:
        return self.real.count_chat_tokens(messages)

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return self.real.count_text_tokens(texts)

    async def generate(self, messages: Messages, params: GenerationParams) -> Completion:
        return Completion("", 0, 0, "stop", params.model or self.model_name)

    async def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        yield StreamEvent(done=True, completion=await self.generate(messages, params))

    async def ready(self) -> bool:
        return True

    def models(self) -> list[str]:
        return [self.model_name]

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        return AdapterSyncReport(failed={name: "the zero-cost backend serves no adapters" for name in desired})

    async def close(self) -> None:
        pass
