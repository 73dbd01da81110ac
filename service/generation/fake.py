"""A deterministic backend that runs no model: for tests of everything but generation, and for
measuring the service's own cost (`bench/query.py`). Never a serving choice (no setting picks it).

It answers with the first sentence of passage [1] of its prompt, cited, or says it has no
passage; `reply` fixes the answer instead ("" measures the service with generation taken out).
It streams word by word and honours max_tokens (in words) and stop strings. Tokens are
counted by `counter` (a real backend's, where packing must be exact) or by `WordCounter`.
It "serves" any adapter it is given by name (answering as the base model does), so the
adapter lifecycle around a backend can be tested without one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

from service.generation.base import (
    AdapterSyncReport, Backend, Completion, GenerationParams, Messages, StreamEvent, TokenCounter,
)

_WORDS = re.compile(r"\w+|[^\w\s]")
_FIRST_PASSAGE = re.compile(r"\[1\][^\n]*\n(?P<text>.+?)(?:\n\n|$)", re.S)


class WordCounter:
    """A token per word or punctuation mark, and 4 per message for the template."""

    PER_MESSAGE = 4

    def __init__(self, context_window: int = 2048):
        self.context_window = context_window

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return [len(_WORDS.findall(t)) for t in texts]

    def count_chat_tokens(self, messages: Messages) -> int:
        return sum(self.PER_MESSAGE + self.count_text_tokens([m.get("content") or ""])[0] for m in messages) + 1


class FakeGenerator(Backend):
    def __init__(self, model_name: str = "fake-model", counter: TokenCounter | None = None, reply: str | None = None):
        self.model_name = model_name
        self.counter = counter or WordCounter()
        self.context_window = self.counter.context_window
        self.reply = reply
        self.prompts: list[Messages] = []  # every prompt it was given, for tests to read
        self.params: list[GenerationParams] = []  # and the parameters each came with
        self.adapters: list[str] = []

    def count_chat_tokens(self, messages: Messages) -> int:
        return self.counter.count_chat_tokens(messages)

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return self.counter.count_text_tokens(texts)

    def models(self) -> list[str]:
        return [self.model_name, *self.adapters]

    async def sync_adapters(self, desired: dict[str, Path]) -> AdapterSyncReport:
        report = AdapterSyncReport(loaded=sorted(set(desired) - set(self.adapters)), unloaded=sorted(set(self.adapters) - set(desired)))
        self.adapters = sorted(desired)
        return report

    def answer(self, messages: Messages) -> str:
        if self.reply is not None:
            return self.reply
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        found = _FIRST_PASSAGE.search(question)
        if found is None:
            return "I have no passage to answer from."
        sentence = re.split(r"(?<=[.!?])\s", found["text"].strip(), maxsplit=1)[0]
        return f"{sentence} [1]"

    async def stream(self, messages: Messages, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        self.prompts.append(messages)
        self.params.append(params)
        text = self.answer(messages)
        cuts = [text.find(s) for s in params.stop if s and s in text]
        if cuts:
            text = text[: min(cuts)]
        words = text.split(" ") if text else []
        finish = "length" if len(words) > params.max_tokens else "stop"
        words = words[: params.max_tokens]
        for i, word in enumerate(words):
            yield StreamEvent(text=word if i == 0 else f" {word}")
        completion = Completion(" ".join(words), self.count_chat_tokens(messages), len(words), finish,
                                params.model or self.model_name)
        yield StreamEvent(done=True, completion=completion)
