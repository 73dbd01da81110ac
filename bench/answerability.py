"""Can anything tell an answerable question from an unanswerable one, before answering? Measures, on a
seeded sample of a QA set (use a training half), how well two signals separate them, as the AUC of
"answerable scores higher" and the decline / false-decline rates at a few thresholds:

1. retrieval: the best passage's dense similarity to the question (free);
2. the model's own judgement: the prompt `/ask` would send (same passages, same packing), followed
   by "Do the passages above state the answer to this question? Reply Yes or No.", scored as
   log P(yes) - log P(no) of the first token (one prefill, no answer generated).

The model is the configured embedded one, on its configured engine: OpenVINO (its exported IR, run by
OpenVINO for the logits) or transformers. Prints figures; asserts nothing. bench/RESULTS.md has a run.

    python bench/answerability.py QA.jsonl --index-dir DIR [--per-class 40] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYSTEM = "You check whether passages answer a question. Reply with Yes or No only."
ASK = "\n\nDo the passages above state the answer to this question? Reply Yes or No."


def auc(scores: np.ndarray, answerable: np.ndarray) -> float:
    a, u = scores[answerable], scores[~answerable]
    return float(np.mean(a[:, None] > u[None, :]) + 0.5 * np.mean(a[:, None] == u[None, :]))


def trade_off(name: str, scores: np.ndarray, answerable: np.ndarray) -> None:
    print(f"  {name}: AUC {auc(scores, answerable):.3f}")
    for q in (0.2, 0.3, 0.4, 0.5):
        t = float(np.quantile(scores, q))
        print(f"    decline below {t:7.3f}: declines {np.mean(scores[~answerable] < t):.0%} of unanswerable, "
              f"{np.mean(scores[answerable] < t):.0%} of answerable")


class Judge:
    """log P(yes) - log P(no) for the first token after a prompt, from the generator's own model files."""

    def __init__(self, generator):
        tokenizer = generator.tokenizer
        first = lambda words: sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})  # noqa: E731
        self.yes, self.no = first(["Yes", "yes", " Yes", " yes"]), first(["No", "no", " No", " no"])
        self.tokenizer = tokenizer
        if hasattr(generator, "model"):  # transformers
            self.torch, self.model = generator._torch, generator.model
            self.request = None
        else:  # openvino: the exported IR, for its logits (OpenVINO GenAI's pipeline gives none)
            import openvino

            compiled = openvino.Core().compile_model(str(generator.model_dir / "openvino_model.xml"), "CPU")
            self.request, self.inputs = compiled.create_infer_request(), {i.get_any_name() for i in compiled.inputs}

    def logits(self, ids: list[int]) -> np.ndarray:
        if self.request is None:
            with self.torch.inference_mode():
                return self.model(self.torch.tensor([ids])).logits[0, -1].float().numpy()
        n = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, n), dtype=np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, dtype=np.int32)}
        self.request.reset_state()
        self.request.infer({k: v for k, v in feed.items() if k in self.inputs})
        return self.request.get_tensor("logits").data[0, -1].astype(np.float64)

    def score(self, messages: list[dict]) -> float:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        logits = self.logits(self.tokenizer(text, add_special_tokens=False)["input_ids"]).astype(np.float64)
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        return float(np.logaddexp.reduce(logp[self.yes]) - np.logaddexp.reduce(logp[self.no]))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("qa", type=Path)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=40, help="answerable questions, and as many unanswerable")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from indexer.embedder import load_embedder
    from ragtune.qa import read_qa
    from ragtune.settings import get_settings
    from service.generation import create_generator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings()
    settings.index.dir = args.index_dir
    items = read_qa(args.qa).items
    rng = random.Random(args.seed)
    sample = (rng.sample([i for i in items if i.answerable], args.per_class)
              + rng.sample([i for i in items if not i.answerable], args.per_class))
    embedder, generator = load_embedder(settings.embedding, settings.index), create_generator(settings.generation)
    pipeline = build_pipeline(settings, embedder, generator)
    judge = Judge(generator)
    print(f"{len(sample)} questions of {args.qa} ({args.per_class} answerable), model {generator.model_name}, "
          f"engine {'transformers' if judge.request is None else 'openvino'}")
    retrieval, judged, seconds = [], [], []
    for item in sample:
        prepared = await pipeline.prepare_async(item.question, [], RetrievalOptions(), 48)
        retrieval.append(max((p.score for p in prepared.passages), default=0.0))
        started = time.perf_counter()
        judged.append(judge.score([{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": prepared.messages[-1]["content"] + ASK}]))
        seconds.append(time.perf_counter() - started)
    answerable = np.array([i.answerable for i in sample])
    trade_off("retrieval, best passage's score", np.array(retrieval), answerable)
    trade_off(f"the model's yes/no judgement ({np.median(seconds):.2f} s per question, p50)", np.array(judged), answerable)
    await generator.close()


if __name__ == "__main__":
    asyncio.run(main())
