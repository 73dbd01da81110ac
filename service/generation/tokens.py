"""A model's prompt tokens exactly as it sees them: its chat template, its tokenizer.

Shared by the embedded engine (counting and generating), the vLLM backend with a local
tokenizer copy, and fine-tuning (which must build the very prompts the service sends).
"""

from __future__ import annotations

from service.generation.base import Messages


class ChatTokens:
    """The chat template rendered and the text encoded, as apply_chat_template(tokenize=True)
    does: the template writes the special tokens, so none are added."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The ids the model is given for this conversation, an assistant turn opened."""
        return self.encode([self.render(messages)])[0]

    def chat(self, messages: Messages) -> int:
        return len(self.prompt_ids(messages))

    def counts(self, texts: list[str]) -> list[int]:
        """Token counts of texts on their own."""
        return [len(ids) for ids in self.encode(texts)]

    def text(self, text: str) -> int:
        return self.counts([text])[0]


class ChatCounter:
    """A TokenCounter from a chat template and a window, with no model behind it (fine-tuning
    builds the served prompts with it)."""

    def __init__(self, tokens: ChatTokens, context_window: int):
        self.tokens = tokens
        self.context_window = context_window

    def count_chat_tokens(self, messages: Messages) -> int:
        return self.tokens.chat(messages)

    def count_text_tokens(self, texts: list[str]) -> list[int]:
        return self.tokens.counts(texts)
