"""Split documents into chunks that the embedder sees whole.

Sizes are counted with the embedder's own tokenizer. A chunk is embedded as its heading
context ("Title > Section") followed by its text; the two together never exceed the
model's max sequence length, so nothing is silently truncated. Chunks end at paragraph
or sentence boundaries where they can, overlap by whole sentences, and a sentence longer
than a chunk is cut at token boundaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol, Sequence

from indexer.loaders import Block, Document
from ragtune.settings import ChunkingSettings

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
MAX_CONTEXT_TOKENS = 48  # heading context beyond this is cut: it is a hint, not content
# The tokenizer's time grows faster than linearly with the length of one input, so a sentence
# longer than this is cut (at a space, where there is one) before it is tokenized: a 50 MB
# line costs what 50 MB of ordinary text does.
SEGMENT_CHARS = 2000
# Text the tokenizer reads as few tokens but many characters (a long run without spaces is one
# [UNK]) counts this many characters a token when chunks are filled, so no chunk grows huge.
MAX_CHARS_PER_TOKEN = 12


def _segments(sentence: str) -> list[str]:
    if len(sentence) <= SEGMENT_CHARS:
        return [sentence]
    pieces, start = [], 0
    while start < len(sentence):
        end = start + SEGMENT_CHARS
        if end < len(sentence):
            space = sentence.rfind(" ", start + SEGMENT_CHARS // 2, end)
            end = space if space > 0 else end
        pieces.append(sentence[start:end].strip())
        start = end
    return [p for p in pieces if p]


class Tokenizer(Protocol):
    def __call__(self, texts: list[str], **kwargs): ...


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    position: int
    text: str
    headings: tuple[str, ...]
    context: str  # prepended to the text when embedding
    token_count: int  # of the embedded input (context + text), without special tokens
    page: int | None = None

    @property
    def embedding_input(self) -> str:
        return f"{self.context}\n{self.text}" if self.context else self.text


@dataclass
class _Unit:
    text: str
    tokens: int
    joiner: str  # "\n\n" before the first sentence of a block, " " otherwise
    page: int | None

    @property
    def weight(self) -> int:
        """Its size when chunks are filled: tokens, or characters / MAX_CHARS_PER_TOKEN if more."""
        return max(self.tokens, len(self.text) // MAX_CHARS_PER_TOKEN)


def _by_chars(text: str, size: int) -> list[str]:
    return [p for p in (text[i : i + size].strip() for i in range(0, len(text), size)) if p]


class Chunker:
    def __init__(self, tokenizer: Tokenizer, max_text_tokens: int, settings: ChunkingSettings):
        if settings.chunk_tokens > max_text_tokens:
            raise ValueError(
                f"chunking.chunk_tokens={settings.chunk_tokens} exceeds what the embedder reads "
                f"({max_text_tokens} tokens); text past that would be silently truncated. "
                f"Set RAGTUNE_CHUNKING__CHUNK_TOKENS to at most {max_text_tokens}"
            )
        self._tokenizer = tokenizer
        self.limit = settings.chunk_tokens
        self.overlap = settings.overlap_tokens

    def _count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _split_by_tokens(self, text: str, limit: int) -> list[str]:
        """Cut an over-long sentence into pieces of at most `limit` tokens at token edges."""
        offsets = self._tokenizer([text], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0]
        step = max(1, limit - self.overlap)
        pieces = []
        for start in range(0, len(offsets), step):
            window = offsets[start : start + limit]
            pieces.append(text[window[0][0] : window[-1][1]].strip())
            if start + limit >= len(offsets):
                break
        return [p for p in pieces if p]

    def _context(self, document: Document, headings: tuple[str, ...]) -> tuple[str, int]:
        parts = [document.title] if document.title else []
        parts += [h for h in headings if h and h != document.title]
        if not parts:
            return "", 0
        context = " > ".join(parts)
        tokens = self._count([context])[0] + 1  # + the newline that joins it to the text
        if tokens > MAX_CONTEXT_TOKENS:
            context = self._split_by_tokens(context, MAX_CONTEXT_TOKENS - 1)[0]
            tokens = self._count([context])[0] + 1
        return context, tokens

    def _units(self, blocks: Sequence[Block], limit: int) -> list[_Unit]:
        sentences: list[tuple[str, str, int | None]] = []
        for block in blocks:
            pieces = (p for s in _SENTENCE_END.split(block.text) if s.strip() for p in _segments(s.strip()))
            for i, sentence in enumerate(pieces):
                sentences.append((sentence, "\n\n" if i == 0 else " ", block.page))
        counts = self._count([s for s, _, _ in sentences])
        units: list[_Unit] = []
        for (text, joiner, page), tokens in zip(sentences, counts):
            if _Unit(text, tokens, joiner, page).weight <= limit:
                units.append(_Unit(text, tokens, joiner, page))
                continue
            pieces = self._split_by_tokens(text, limit) if tokens > limit else _by_chars(text, limit * MAX_CHARS_PER_TOKEN)
            for i, (piece, count) in enumerate(zip(pieces, self._count(pieces))):
                units.append(_Unit(piece, count, joiner if i == 0 else " ", page))
        return units

    def _pack(self, units: list[_Unit], limit: int) -> list[list[_Unit]]:
        groups: list[list[_Unit]] = []
        current: list[_Unit] = []
        size = 0
        for unit in units:
            if current and size + unit.weight > limit:
                groups.append(current)
                carry: list[_Unit] = []
                carried = 0
                for previous in reversed(current):
                    if carried + previous.weight > self.overlap:
                        break
                    carry.insert(0, previous)
                    carried += previous.weight
                while carry and carried + unit.weight > limit:
                    carried -= carry.pop(0).weight
                current, size = carry, carried
            current.append(unit)
            size += unit.weight
        if current:
            groups.append(current)
        return groups

    def chunk(self, document: Document) -> list[Chunk]:
        drafts: list[tuple[str, tuple[str, ...], str, int | None, int]] = []
        for headings, section in groupby(document.blocks, key=lambda b: b.headings):
            context, context_tokens = self._context(document, headings)
            limit = self.limit - context_tokens
            for group in self._pack(self._units(list(section), limit), limit):
                text = "".join((u.joiner if i else "") + u.text for i, u in enumerate(group))
                drafts.append((text, headings, context, group[0].page, limit))
        # Count what the model will really see; a join can tokenize differently from its parts.
        inputs = [f"{c}\n{t}" if c else t for t, _, c, _, _ in drafts]
        chunks: list[Chunk] = []
        for (text, headings, context, page, limit), tokens in zip(drafts, self._count(inputs)):
            texts = [text] if tokens <= self.limit else self._split_by_tokens(text, limit)
            for piece in texts:
                embedded = f"{context}\n{piece}" if context else piece
                count = tokens if len(texts) == 1 else self._count([embedded])[0]
                chunks.append(Chunk(document.doc_id, len(chunks), piece, headings, context, count, page))
        return chunks
