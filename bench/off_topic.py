"""Does retrieval's own score tell a question the documents cover from one they do not?

Indexes the SQuAD sample without one of its articles, then sends each question of a QA file through the
`/ask` pipeline's retrieval and packing and keeps the best packed passage's cosine similarity to the
question: the answerable questions about the indexed articles against every question about the article
left out (which no passage can answer). Prints the separation (AUC) and, per floor, the share of each kind
that `prompt.decline_below_similarity` at that floor would decline. Asserts nothing.

    ragtune eval squad ../shared/data/squad-v2-dev-5articles.json --out squad
    python bench/off_topic.py squad/corpus.jsonl squad/train.jsonl --leave-out "Sky_(United_Kingdom)"   # choose
    python bench/off_topic.py squad/corpus.jsonl squad/test.jsonl --leave-out "Victoria_(Australia)"    # measure
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def best_similarities(index: Path, questions: list[str]) -> list[float]:
    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings
    from service import answerable
    from service.generation import create_generator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings()
    settings.index.dir = index
    generator = create_generator(settings.generation)  # the packer counts with the model's tokenizer
    pipeline = build_pipeline(settings, load_embedder(settings.embedding, settings.index), generator)
    out = []
    for question in questions:
        prepared = await pipeline.prepare_async(question, [], RetrievalOptions(), 48)
        out.append(answerable.best_similarity(prepared.passages))
    await generator.close()
    return out


def main() -> None:
    from evaluation.metrics import separation_auc

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path, help="corpus.jsonl of `ragtune eval squad` (records with an `id`)")
    parser.add_argument("qa", type=Path, help="its train.jsonl or test.jsonl")
    parser.add_argument("--leave-out", required=True, help="the article whose paragraphs are not indexed")
    args = parser.parse_args()
    items = [json.loads(line) for line in args.qa.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(line + "\n" for line in args.corpus.read_text().splitlines()
                                  if line.strip() and not json.loads(line)["id"].startswith(args.leave_out)))
        subprocess.run([sys.executable, "-m", "ragtune", "index", "add", str(corpus), "--index-dir", f"{tmp}/index"],
                       check=True, capture_output=True, cwd=REPO)
        kept = [i for i in items if i["doc_id"].startswith(args.leave_out) or i.get("answerable", True)]
        scores = asyncio.run(best_similarities(Path(tmp) / "index", [i["question"] for i in kept]))
    off = np.array([s for i, s in zip(kept, scores) if i["doc_id"].startswith(args.leave_out)])
    on = np.array([s for i, s in zip(kept, scores) if not i["doc_id"].startswith(args.leave_out)])
    print(f"{args.qa}, {args.leave_out} left out of the index: {len(on)} answerable questions about indexed articles, "
          f"{len(off)} about the one left out; AUC {separation_auc(list(on), list(off)):.3f}")
    for floor in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
        print(f"  decline below {floor:.2f}: {np.mean(off < floor):6.1%} of the questions about the missing article, "
              f"{np.mean(on < floor):5.1%} of the answerable ones")


if __name__ == "__main__":
    main()
