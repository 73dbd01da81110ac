"""A model's prompt tokens exactly as it sees them: its chat template, its tokenizer.

Shared by the embedded engine (counting and generating), the vLLM backend with a local
tokenizer copy, and fine-tuning (which must build the very prompts the service sends).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from service.generation.base import Messages, TextCountCache

log = logging.getLogger("ragtune.generation")


def newline_segments(text: str, specials: tuple[str, ...] = ()) -> list[str]:
    """`text` cut before every newline that follows a non-space character, and before the last
    newline of a run of two or more that a non-space character follows (unless it begins one
    of `specials`, the tokenizer's added tokens, which end the text the pre-tokenizer sees).

    "a.\n\n[1] T\nbody" -> ["a.", "\n", "\n[1] T", "\nbody"]: each piece but the first ends
    on a non-space character (but the last), and the text after a blank line starts a piece
    of its own however many newlines come before it. A question after "\n\n" or after
    "\n\n\n\n" (no passages) is then one piece, counted once.
    """
    lines = text.split("\n")
    pieces, current = [], lines[0]
    for line in lines[1:]:
        if current and not current[-1].isspace():
            pieces.append(current)
            current = "\n" + line
        elif line and not line[0].isspace() and current and not current.strip("\n") and not line.startswith(specials):
            pieces.append(current)  # a run of newlines only, before text: cut before its last newline
            current = "\n" + line
        else:
            current += "\n" + line
    pieces.append(current)
    return pieces


def splits_before_newlines(tokenizer) -> bool:
    """Whether the tokenizer never makes a token across a cut of `newline_segments`.

    True for byte-level BPE with GPT-2's pre-tokenizer (SmolLM2, GPT-2, StarCoder, ...): its
    pre-tokens are either all whitespace or an optional space and non-space characters, so
    none spans a non-space character followed by a newline; BPE merges stay inside
    pre-tokens; and its regex looks no further ahead than the next character, which for a
    whitespace run ending at a cut is the non-space one in both the piece and the whole. A
    run of newlines before a non-space character is two pre-tokens, all but its last newline
    (`\s+(?!\S)`) and that newline (`\s+`), so a cut between them is one too: the first piece
    ends with `\s+(?!\S)` matching up to a space in the whole and up to the end alone. The
    rest must not reach across either: no normalizer, no prefix space added to each piece,
    no BPE dropout, and no special token that strips whitespace or holds a newline.
    Llama 3's and Qwen's pre-tokenizers join punctuation with the newlines after it, so
    they fail this and count whole prompts.
    """
    from tokenizers import pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return False
    pre = backend.pre_tokenizer
    if not isinstance(pre, pre_tokenizers.ByteLevel) or not pre.use_regex or pre.add_prefix_space:
        return False
    if type(backend.model).__name__ != "BPE" or backend.model.dropout:
        return False
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    return not any(t.lstrip or t.rstrip or t.single_word or "\n" in t.content for t in added)


# Stands for the last message's content when a template is rendered once for many contents.
HOLE = "\x00ragtune:content\x00"
HOLE_PROBES = ("plain", "  leading and trailing  ", "\nnew\nlines\n", "{{ braces }} {% raw %}", "<|im_end|>\n<|im_start|>", "")


class ChatTokens:
    """Rendering the template and encoding its text is what apply_chat_template(tokenize=True)
    does (the template writes the special tokens; none are added), minus ~1 ms of Python per
    call that the request path does not need.

    Counting a prompt, on the request path, avoids both costs where that is exact:
    - Counts are cached by text (a text's count never changes). With a tokenizer that passes
      `splits_before_newlines`, texts and prompts are counted as the sum of their newline
      segments: a RAG prompt is a system prompt, passages and a question, and only the
      question and the passage headers are new, so counting one costs ~15 us instead of
      encoding ~800 tokens (~0.9 ms), and a passage counted as a candidate is not encoded
      again in the final prompt.
    - A template that puts the last message's content in as is (checked on probes) is run
      once per conversation head, around a hole that each prompt's content fills (~50-150 us
      of Jinja less per count).
    Generation always runs the template and encodes the whole text, and checks both
    shortcuts against that; a difference turns the shortcut off for good. Without segments,
    whole prompts are counted, and the last few prompts' ids are kept, so generation does
    not encode the prompt packing just counted.
    """

    RECENT = 16
    SKELETONS = 64

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer, when there is one
        self._fast = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        self._recent: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self._counts = TextCountCache(self.texts)  # any text's own count: whole texts or segments alike
        self.counts_by_segments = splits_before_newlines(tokenizer)
        self._specials = tuple(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
        self._skeletons: OrderedDict[tuple, str] = OrderedDict()
        self.fills_last_content = self._fills_last_content()

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _fills_last_content(self) -> bool:
        """Whether the template puts the last message's content in as is, once, whatever it is."""
        try:
            for head in ([], [{"role": "system", "content": "Be brief."}]):
                for content in HOLE_PROBES:
                    messages = [*head, {"role": "user", "content": content}]
                    if self.render(messages) != self._filled(messages):
                        return False
        except Exception:  # a template that refuses the probes (roles, content checks): render every time
            return False
        return True

    def _filled(self, messages: Messages) -> str | None:
        """The prompt as the template rendered once around a hole for the last message's content
        (cached by everything else), with the content put in: no template run per prompt. None
        when the messages do not fit that (no messages, or content that is not text)."""
        if not messages or not isinstance(messages[-1].get("content"), str):
            return None
        *head, last = messages
        key = (tuple(tuple(m.items()) for m in head), tuple((k, v) for k, v in last.items() if k != "content"))
        try:
            with self._lock:
                skeleton = self._skeletons.get(key)
        except TypeError:  # content in parts (lists) earlier in the conversation
            return None
        if skeleton is None:
            skeleton = self.render([*head, {**last, "content": HOLE}])
            if skeleton.count(HOLE) != 1:
                return None
            with self._lock:
                self._skeletons[key] = skeleton
                while len(self._skeletons) > self.SKELETONS:
                    self._skeletons.popitem(last=False)
        return skeleton.replace(HOLE, last["content"])

    def _text(self, messages: Messages) -> str:
        """The rendered prompt, for counting."""
        if self.fills_last_content:
            filled = self._filled(messages)
            if filled is not None:
                return filled
        return self.render(messages)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The ids generation feeds the model: always the template run and the whole text encoded.
        Both ways of counting are checked against them."""
        text = self.render(messages)
        if self.fills_last_content and (filled := self._filled(messages)) not in (None, text):
            self.fills_last_content = False
            log.error("the chat template does not put the last message's content in as is; rendering every prompt from now on")
        with self._lock:
            ids = self._recent.get(text)
        if ids is None:
            ids = self.encode([text])[0]
            with self._lock:
                self._recent[text] = ids
                while len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)
        if self.counts_by_segments and (counted := self.counts([text])[0]) != len(ids):
            self.counts_by_segments = False
            log.error(
                "a prompt counted by newline segments as %d tokens is %d tokens encoded whole: this tokenizer "
                "joins tokens across newlines; counting whole prompts from now on", counted, len(ids),
            )
        return ids

    def chat(self, messages: Messages) -> int:
        if self.counts_by_segments:
            return self.counts([self._text(messages)])[0]
        return len(self.prompt_ids(messages))

    def counts(self, texts: list[str]) -> list[int]:
        """Token counts of texts on their own, cached."""
        if not self.counts_by_segments:
            return self._counts(texts)
        pieces = [newline_segments(t, self._specials) for t in texts]
        counted = iter(self._counts([p for each in pieces for p in each]))  # one batch for what is new
        return [sum(next(counted) for _ in each) for each in pieces]

    def texts(self, texts: list[str]) -> list[int]:
        """Token counts of texts on their own, encoded now."""
        return [len(ids) for ids in self.encode(texts)] if texts else []

    def text(self, text: str) -> int:
        return self.texts([text])[0]
