"""Can anything tell an answerable question from an unanswerable one, before answering? Measures, on a
seeded sample of a QA set (use a training half), how well two signals separate them, as the AUC of
"answerable scores higher" and the decline / false-decline rates at a few thresholds:

1. retrieval: the best passage's dense similarity to the question (free);
2. the model's own judgement, as the setting prompt.answerable_check makes it (service/answerable.py):
   the passages and question `/ask` would send, then "Do the passages above state the answer to this
   question? Reply Yes or No.", scored as log P(yes) - log P(no) of the reply's first token (one
   prefill, no answer generated).

The model and backend are the configured ones. Prints figures; asserts nothing. Pick the setting's
threshold from these rows on a training half; bench/RESULTS.md has a run.

    python bench/answerability.py QA.jsonl --index-dir DIR [--per-class 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def auc(scores: np.ndarray, answerable: np.ndarray) -> float:
    a, u = scores[answerable], scores[~answerable]
    return float(np.mean(a[:, None] > u[None, :]) + 0.5 * np.mean(a[:, None] == u[None, :]))


def trade_off(name: str, scores: np.ndarray, answerable: np.ndarray) -> None:
    print(f"  {name}: AUC {auc(scores, answerable):.3f}")
    for q in (0.2, 0.3, 0.4, 0.5):
        t = float(np.quantile(scores, q))
        print(f"    decline below {t:7.3f}: declines {np.mean(scores[~answerable] < t):.0%} of unanswerable, "
              f"{np.mean(scores[answerable] < t):.0%} of answerable")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("qa", type=Path)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=40, help="answerable questions, and as many unanswerable")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from indexer.embedder import load_embedder
    from evaluation.qa import balanced
    from ragtune.qa import read_qa
    from ragtune.settings import get_settings
    from service import answerable
    from service.generation import create_generator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings()
    settings.index.dir = args.index_dir
    items = read_qa(args.qa).items
    sample = balanced(items, args.per_class, args.per_class, args.seed)
    embedder, generator = load_embedder(settings.embedding, settings.index), create_generator(settings.generation)
    pipeline = build_pipeline(settings, embedder, generator)
    print(f"{len(sample)} questions of {args.qa} ({args.per_class} answerable), model {generator.model_name}, "
          f"engine {getattr(generator, 'engine', settings.generation.backend)}")
    retrieval, judged, seconds = [], [], []
    for item in sample:
        prepared = await pipeline.prepare_async(item.question, [], RetrievalOptions(), 48)
        retrieval.append(max((p.score for p in prepared.passages), default=0.0))
        started = time.perf_counter()
        top = await generator.first_token_logprobs(answerable.check_messages(prepared.messages), None)
        judged.append(answerable.yes_no_margin(top))
        seconds.append(time.perf_counter() - started)
    answerable = np.array([i.answerable for i in sample])
    trade_off("retrieval, best passage's score", np.array(retrieval), answerable)
    trade_off(f"the model's yes/no judgement ({np.median(seconds):.2f} s per question, p50)", np.array(judged), answerable)
    await generator.close()


if __name__ == "__main__":
    asyncio.run(main())
