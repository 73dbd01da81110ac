"""A deterministic embedder that loads no model: for tests of everything but embedding quality.

Each text is a hashed bag of its lowercased words (stop words left out), normalised: texts
that share words are near, so retrieval still finds the passage a question's words come from.
Its identity is its own: an index it built is refused by the real embedder, and the reverse.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

_TOKENS = re.compile(r"\w+|[^\w\s]")
_STOP = frozenset("a an and are as at be by did do for from had has have he her his in is it its of on or "
                  "that the their they this to was were what when where which who why with".split())


def _bucket(token: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little") % size


class WordTokenizer:
    """The slice of a Hugging Face tokenizer that chunking uses: ids, and character offsets."""

    def __call__(self, texts, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        spans = [[(m.start(), m.end()) for m in _TOKENS.finditer(t)] for t in texts]
        out = {"input_ids": [[_bucket(t[a:b].lower(), 30_000) for a, b in s] for t, s in zip(texts, spans)]}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 0


class FakeEmbedder:
    name = "ragtune/fake-hashed-words"
    fingerprint = "fake"

    def __init__(self, dimension: int = 1024, max_seq_length: int = 256):
        self.dimension = dimension
        self.max_seq_length = max_seq_length
        self.tokenizer = WordTokenizer()
        self.special_tokens = 0

    @property
    def max_text_tokens(self) -> int:
        return self.max_seq_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _TOKENS.findall(text.lower()):
                if word.isalnum() and word not in _STOP:
                    vectors[row, _bucket(word, self.dimension)] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)

    def identity(self) -> dict:
        return {"name": self.name, "dimension": self.dimension, "fingerprint": self.fingerprint,
                "max_seq_length": self.max_seq_length}
