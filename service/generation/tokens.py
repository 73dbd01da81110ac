"""A model's prompt tokens exactly as it sees them: its chat template, its tokenizer.

Shared by the embedded engine (counting and generating), the vLLM backend with a local
tokenizer copy, and fine-tuning (which must build the very prompts the service sends).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from service.generation.base import Messages


class ChatTokens:
    """Rendering the template and encoding its text is what apply_chat_template(tokenize=True)
    does (the template writes the special tokens; none are added), minus ~1 ms of Python per
    call that the request path does not need. The last few prompts' ids are kept: packing
    counts the final prompt, and generation then needs the same ids, so a request tokenizes
    its prompt once."""

    RECENT = 16

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer, when there is one
        self._fast = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        self._recent: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def prompt_ids(self, messages: Messages) -> list[int]:
        text = self.render(messages)
        with self._lock:
            ids = self._recent.get(text)
        if ids is None:
            ids = self.encode([text])[0]
            with self._lock:
                self._recent[text] = ids
                while len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)
        return ids

    def chat(self, messages: Messages) -> int:
        return len(self.prompt_ids(messages))

    def texts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.encode(texts)]

    def text(self, text: str) -> int:
        return self.texts([text])[0]
