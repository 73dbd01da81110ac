"""The lexical side of hybrid retrieval: a BM25 index (bm25s) over the same chunks as FAISS.

Dense embeddings miss exact names, codes and rare words that BM25 catches, and the
other way round; the retriever fuses both rankings. The indexer writes the BM25 index
into each version directory next to the vectors, keyed by the same chunk ids, so a
version is complete and immutable as one unit. Text is lower-cased, English stop words
are dropped and words are stemmed (Snowball), for documents and queries alike.
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from pathlib import Path

import numpy as np

IDS_FILE = "chunk_ids.npy"


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


def tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


def corpus(db: sqlite3.Connection) -> tuple[list[int], list[str]]:
    """Chunk ids (ascending) and what BM25 sees of each: its headings/title context and its
    text, as the embedder does."""
    rows = db.execute("SELECT id, context, text FROM chunks ORDER BY id").fetchall()
    return [r[0] for r in rows], [f"{r[1]}\n{r[2]}" if r[1] else r[2] for r in rows]


def _fit(texts: list[str]):
    import bm25s

    model = bm25s.BM25()
    model.index(tokenize(texts), show_progress=False)
    return model


def build(db: sqlite3.Connection, target: Path) -> None:
    """Write a BM25 index of the chunks in `db` into `target`."""
    ids, texts = corpus(db)
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / IDS_FILE, np.asarray(ids, dtype=np.int64))
    if ids:
        _fit(texts).save(target, show_progress=False)


class LexicalIndex:
    def __init__(self, ids: np.ndarray, model):
        self.ids = ids
        self.model = model

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        import bm25s

        ids = np.load(directory / IDS_FILE)
        model = bm25s.BM25.load(directory, mmap=True, show_progress=False) if len(ids) else None
        return cls(ids, model)

    @classmethod
    def in_memory(cls, db: sqlite3.Connection) -> LexicalIndex:
        ids, texts = corpus(db)
        return cls(np.asarray(ids, dtype=np.int64), _fit(texts) if ids else None)

    def search(self, query: str, k: int, allowed: list[int] | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) best first; only chunks sharing a word with the query."""
        if self.model is None or k <= 0:
            return []
        tokens = [t for t in tokenize([query])[0] if t in self.model.vocab_dict]
        if not tokens:
            return []
        mask = None
        if allowed is not None:
            wanted = np.asarray(allowed, dtype=np.int64)
            positions = np.searchsorted(self.ids, wanted)
            inside = positions < len(self.ids)
            positions, wanted = positions[inside], wanted[inside]
            mask = np.zeros(len(self.ids), dtype=np.float32)
            mask[positions[self.ids[positions] == wanted]] = 1
        k = min(k, len(self.ids))
        docs, scores = self.model.retrieve([tokens], k=k, show_progress=False, weight_mask=mask, n_threads=1)
        return [(int(self.ids[d]), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]
