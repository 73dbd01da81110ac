"""Can anything tell an answerable question from an unanswerable one, before answering? Measures, on a
seeded sample of a QA set (use a training half), how well two signals separate them, as the AUC of
"answerable scores higher" and the decline / false-decline rates at a few thresholds:

1. retrieval: the best passage's dense similarity to the question (free);
2. the model's own judgement, as the setting prompt.answerable_check makes it (service/answerable.py):
   the passages and question `/ask` would send, then "Do the passages above state the answer to this
   question? Reply Yes or No.", scored as log P(yes) - log P(no) of the reply's first token (one
   prefill, no answer generated).

With --retrieval-weight W, both together as prompt.answerable_check_retrieval_weight adds them: the
judgement plus W times the retrieval score. --save keeps each question's two scores (JSON lines).

With --probe, a third: how much of the answer the model's own representation holds, whatever its
reply. The check prompt's last hidden state at each layer (the configured model, run by transformers)
feeds a logistic regression, scored by 5-fold cross-validation with the folds split by paragraph, so
no paragraph is both fitted and scored. It estimates what fine-tuning a judge on this much data could
reach; it is not a setting the service has.

The model and backend are the configured ones. Prints figures; asserts nothing. Pick the setting's
threshold from these rows on a training half; bench/RESULTS.md has a run.

    python bench/answerability.py QA.jsonl --index-dir DIR [--per-class 40] [--seed 1] [--model ADAPTER] [--at T]
        [--retrieval-weight W] [--save FILE] [--probe]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def auc(scores: np.ndarray, answerable: np.ndarray) -> float:
    from evaluation.metrics import separation_auc  # what `ragtune eval` reports as the check's AUC

    return separation_auc(scores[answerable].tolist(), scores[~answerable].tolist())


def trade_off(name: str, scores: np.ndarray, answerable: np.ndarray, at: tuple[float, ...] = ()) -> None:
    print(f"  {name}: AUC {auc(scores, answerable):.3f}")
    for t in sorted([float(np.quantile(scores, q)) for q in (0.2, 0.3, 0.4, 0.5)] + list(at)):
        print(f"    decline below {t:7.3f}: declines {np.mean(scores[~answerable] < t):.0%} of unanswerable, "
              f"{np.mean(scores[answerable] < t):.0%} of answerable")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("qa", type=Path)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=40, help="answerable questions, and as many unanswerable")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", help="judge with this adapter of the registry (RAGTUNE_ADAPTERS__DIR) instead of the base model")
    parser.add_argument("--at", type=float, action="append", default=[],
                        help="also show the judgement's rates (and each combination's) at this threshold (repeatable)")
    parser.add_argument("--retrieval-weight", type=float, action="append", default=[],
                        help="also show the judgement plus this weight times the retrieval score, as "
                             "prompt.answerable_check_retrieval_weight combines them (repeatable)")
    parser.add_argument("--probe", action="store_true", help="also fit a linear probe on the model's hidden states")
    parser.add_argument("--save", type=Path, help="write each question's scores here (JSON lines), to combine or plot them")
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
    if args.model:
        from ragtune.registry import Registry

        registry = Registry(settings.adapters, settings.generation.model, settings.adapters.resolved_base_dir(settings.generation))
        await generator.sync_adapters({args.model: registry.get(args.model).path})
    print(f"{len(sample)} questions of {args.qa} ({args.per_class} answerable), model {generator.model_name}"
          f"{' with adapter ' + args.model if args.model else ''}, "
          f"engine {getattr(generator, 'engine', settings.generation.backend)}")
    retrieval, judged, seconds, checks = [], [], [], []
    for item in sample:
        prepared = await pipeline.prepare_async(item.question, [], RetrievalOptions(), 48)
        checks.append(answerable.check_messages(prepared.messages))
        retrieval.append(answerable.best_similarity(prepared.passages))
        started = time.perf_counter()
        top = await generator.first_token_logprobs(checks[-1], args.model)
        judged.append(answerable.yes_no_margin(top))
        seconds.append(time.perf_counter() - started)
    is_answerable = np.array([i.answerable for i in sample])
    if args.save:
        args.save.write_text("".join(json.dumps({"id": item.id, "doc_id": item.doc_id, "answerable": item.answerable,
                                                  "retrieval": r, "judgement": j}) + "\n"
                                     for item, r, j in zip(sample, retrieval, judged)))
    trade_off("retrieval, best passage's score", np.array(retrieval), is_answerable)
    trade_off(f"the model's yes/no judgement ({np.median(seconds):.2f} s per question, p50)", np.array(judged), is_answerable,
              tuple(args.at))
    for weight in args.retrieval_weight:
        combined = np.array([answerable.score(j, r, weight) for j, r in zip(judged, retrieval)])
        trade_off(f"the judgement + {weight:g} x retrieval", combined, is_answerable, tuple(args.at))
    await generator.close()
    if args.probe:
        probe(settings, checks, is_answerable, [item.doc_id or item.id for item in sample])


def probe(settings, checks: list, answerable: np.ndarray, groups: list[str]) -> None:
    import torch
    from sklearn.linear_model import LogisticRegression  # a dependency of sentence-transformers
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from service.generation.model_files import converted_model_dir

    path = converted_model_dir(settings.generation)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    states = []
    with torch.inference_mode():
        for messages in checks:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            hidden = model(ids, output_hidden_states=True).hidden_states  # embeddings, then each layer
            states.append(torch.stack([h[0, -1] for h in hidden]).float().numpy())
    x = np.stack(states)
    folds = GroupKFold(n_splits=5)
    aucs = []
    for layer in range(1, x.shape[1]):
        fit = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
        scores = cross_val_predict(fit, x[:, layer], answerable, cv=folds, groups=groups, method="predict_proba")[:, 1]
        aucs.append((auc(scores, answerable), layer, scores))
    print(f"  linear probe, {len(set(groups))} paragraphs in 5 folds: AUC by layer "
          + " ".join(f"{layer}:{value:.2f}" for value, layer, _ in aucs))
    value, layer, scores = max(aucs, key=lambda row: row[0])
    trade_off(f"the best layer's probe (layer {layer} of {x.shape[1] - 1}; chosen on the same folds, so optimistic)",
              scores, answerable)


if __name__ == "__main__":
    asyncio.run(main())
