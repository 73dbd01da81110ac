"""Which indexed documents hold a question's answer, for retrieval recall@k and MRR.

A gold `doc_id` names a document as the index does ("corpus.jsonl#Normans-1") or by the record
id the indexer put after the "#" ("Normans-1"). A gold `context` (used when there is no
doc_id, or one the index does not have) (SQuAD's paragraph) is found
in the index by its text: a chunk belongs to it when most of the smaller of the two is made of
word 5-grams of the other, which holds however the corpus was chunked (a chunk inside the
paragraph, or a paragraph inside a bigger chunk).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from ragtune.qa import QAItem

SHINGLE = 5
SHARED = 0.5
_WORD = re.compile(r"\w+")


def shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def doc_matches(doc_id: str, gold: str) -> bool:
    return doc_id == gold or doc_id.endswith("#" + gold)


class GoldIndex:
    """The index's documents and chunk texts, to resolve gold documents against."""

    def __init__(self, chunks: list[tuple[str, str]]):  # (doc_id, chunk text)
        self.doc_ids = sorted({doc for doc, _ in chunks})
        self._chunks: list[tuple[str, int]] = []
        self._postings: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for number, (doc, text) in enumerate(chunks):
            grams = shingles(text)
            self._chunks.append((doc, len(grams)))
            for gram in grams:
                self._postings[gram].append(number)
        self._cache: dict[str, frozenset[str]] = {}

    @classmethod
    def from_snapshot(cls, snapshot) -> "GoldIndex":
        return cls([(c.doc_id, c.text) for c in snapshot.all_chunks()])

    def by_context(self, context: str) -> frozenset[str]:
        if context not in self._cache:
            grams = shingles(context)
            shared = Counter(n for gram in grams for n in self._postings.get(gram, ()))
            self._cache[context] = frozenset(
                self._chunks[n][0] for n, count in shared.items()
                if count >= SHARED * max(1, min(len(grams), self._chunks[n][1]))
            )
        return self._cache[context]

    def resolve(self, item: QAItem) -> frozenset[str] | None:
        """The gold documents' ids in this index; None when the question names no gold document."""
        if item.doc_id:
            named = frozenset(d for d in self.doc_ids if doc_matches(d, item.doc_id))
            if named or not item.context:
                return named
        if item.context:  # no doc_id, or one this index does not have
            return self.by_context(item.context)
        return None
