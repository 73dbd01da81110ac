"""Prompt and decoding variants side by side, on a seeded sample of a QA set's questions, with
`ragtune eval`'s metrics (evaluation/metrics.py) and one model load for all variants. Tune on a
training half only; report on the held-out half with `ragtune eval run`. Prints one line per
variant; asserts nothing. The "Answer style and decoding" table of docs/measurements.md came from it.

    python bench/answer_style.py VARIANTS.json QA.jsonl --index-dir DIR [--answerable 20]

VARIANTS.json: a list of {"name": ..., "prompt": {PromptSettings fields}, "stop": [...],
"frequency_penalty": x, "repetition_penalty": x}; what a variant leaves out is the setting's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", type=Path)
    parser.add_argument("qa", type=Path)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--answerable", type=int, default=20, help="answerable questions (and half as many unanswerable)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from evaluation.metrics import contains_gold, declines, token_f1
    from indexer.embedder import load_embedder
    from evaluation.qa import balanced
    from ragtune.qa import read_qa
    from ragtune.settings import get_settings
    from service.generation import create_generator
    from service.generation.base import GenerationParams
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings()
    settings.index.dir = args.index_dir
    items = read_qa(args.qa).items
    sample = balanced(items, args.answerable, args.answerable // 2, args.seed)
    embedder, generator = load_embedder(settings.embedding, settings.index), create_generator(settings.generation)
    await generator.ready()
    generation = settings.generation
    print(f"{len(sample)} questions of {args.qa} ({args.answerable} answerable), model {generator.model_name}")
    for variant in json.loads(args.variants.read_text()):
        prompt = settings.prompt.model_copy(update={**variant.get("prompt", {}), "stop": variant.get("stop", settings.prompt.stop)})
        pipeline = build_pipeline(settings.model_copy(update={"prompt": prompt}), embedder, generator)
        params = GenerationParams(
            max_tokens=args.max_tokens,
            frequency_penalty=variant.get("frequency_penalty", generation.frequency_penalty),
            repetition_penalty=variant.get("repetition_penalty", generation.repetition_penalty),
        )
        f1, contained, declined, false_declines, tokens, seconds = [], [], [], [], [], []
        for item in sample:
            started = time.perf_counter()
            prepared = await pipeline.prepare_async(item.question, [], RetrievalOptions(), args.max_tokens)
            answer = await pipeline.complete(prepared, params)
            seconds.append(time.perf_counter() - started)
            tokens.append(answer.completion_tokens)
            if item.answerable:
                f1.append(token_f1(answer.text, list(item.answers)))
                contained.append(contains_gold(answer.text, list(item.answers)))
                false_declines.append(declines(answer.text, prompt.decline_answer))
            else:
                declined.append(declines(answer.text, prompt.decline_answer))

        def mean(values):
            return sum(values) / len(values)

        print(f"{variant['name']:24s} F1 answerable {mean(f1):.3f}  contains gold {mean(contained):.3f}  "
              f"declines {mean(declined):.2f} (answerable {mean(false_declines):.2f})  tokens {mean(tokens):5.1f}  "
              f"s/answer {mean(seconds):.2f}", flush=True)
    await generator.close()


if __name__ == "__main__":
    asyncio.run(main())
