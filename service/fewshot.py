"""Retrieved few-shot demonstrations: the QA pairs most like the question, shown as earlier turns.

The step of the ramp between retrieval and fine-tuning: the same QA file that could train an
adapter instead shows the model a few worked examples. Demonstrations are chosen by the
question's embedding (the one retrieval already computed), nearest first; a pair whose
question is the very question asked is never shown (its answer would leak).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ragtune.qa import read_qa
from ragtune.settings import PromptSettings

log = logging.getLogger("ragtune.fewshot")
MAX_DEMONSTRATIONS = 6


class Demonstrations:
    def __init__(self, path: Path, embedder, prompt: PromptSettings):
        import faiss

        qa = read_qa(Path(path))  # the QA format, as evaluation and training read it; bad lines reported
        self.pairs = [(item.question, item.answers[0] if item.answerable else prompt.decline_answer) for item in qa.items]
        if qa.bad:
            log.warning("fewshot.file %s: %d bad lines left out (first: line %d: %s)", path, len(qa.bad), *qa.bad[0])
        self.embedder = embedder
        vectors = embedder.embed([q for q, _ in self.pairs])
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def nearest(self, question: str, vector: np.ndarray, k: int) -> list[tuple[str, str]]:
        k = min(k, MAX_DEMONSTRATIONS, len(self.pairs))
        if k <= 0:
            return []
        _, ids = self.index.search(vector.reshape(1, -1), min(k + 1, len(self.pairs)))
        same = question.strip().lower()
        chosen = [self.pairs[i] for i in ids[0] if i >= 0 and self.pairs[i][0].strip().lower() != same]
        return chosen[:k]


def as_turns(pairs: list[tuple[str, str]]) -> list[dict]:
    return [turn for q, a in pairs for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
