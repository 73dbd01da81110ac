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

from finetune.data import load_training_data
from ragtune.errors import UsageError
from ragtune.settings import PromptSettings

log = logging.getLogger("ragtune.fewshot")
MAX_DEMONSTRATIONS = 6


class Demonstrations:
    def __init__(self, path: Path, embedder, prompt: PromptSettings):
        import faiss

        data = load_training_data(Path(path), prompt)  # validated like training data; bad lines reported
        self.pairs = [(e.question, e.answer) for e in data.examples if e.kind == "qa"]
        if not self.pairs:
            raise UsageError(f"fewshot.file {path} has no question/answer pairs to show")
        if data.bad or len(self.pairs) < len(data.examples):
            log.warning("fewshot.file %s: %d bad lines and %d non-QA examples left out", path, len(data.bad),
                        len(data.examples) - len(self.pairs))
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
