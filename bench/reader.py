"""Can an extractive reader give the default path answers worth reading and declines, fast, on a CPU?

Fine-tunes the packaged embedder's encoder (all-MiniLM-L6-v2, 22M parameters, Apache-2.0) as a
SQuAD 2.0 style reader: a start and an end logit per token, the [CLS] token standing for "no answer".
It trains on the QA pairs of one file (the gold passage of each; an unanswerable question's target is
[CLS]) within a time budget, picks its decline threshold on a held-back fifth of that file's passages,
and only then reads the held-out file once: token F1 and exact match on the answerable questions,
declines on both kinds, the decline score's AUC, and the time to read one question against five
RAG-sized passages. Prints its figures; asserts nothing.

    ragtune eval squad ../shared/data/squad-v2-dev-5articles.json --out squad
    python bench/reader.py squad/train.jsonl squad/test.jsonl --minutes 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from evaluation.metrics import exact_match, separation_auc, token_f1
from ragtune.settings import packaged_embedder_path

MAX_LEN, STRIDE, MAX_ANSWER_TOKENS = 256, 96, 24


def load(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def features(tokenizer, items: list[dict]) -> tuple[dict, list[int]]:
    """Windows of question + passage, with the answer's token span ([CLS] when unanswerable or
    outside the window), and for each window the item it came from."""
    enc = tokenizer([i["question"] for i in items], [i["context"] for i in items], truncation="only_second",
                    max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length", return_tensors="pt")
    owners = enc.pop("overflow_to_sample_mapping").tolist()
    starts, ends = [], []
    for window, owner in enumerate(owners):
        item = items[owner]
        start = end = 0
        at = item["context"].find(item["answers"][0]) if item.get("answerable", True) and item["answers"] else -1
        if at >= 0:
            first, last = at, at + len(item["answers"][0])
            sequence = enc.sequence_ids(window)
            for t, (a, b) in enumerate(enc["offset_mapping"][window].tolist()):
                if sequence[t] != 1:
                    continue
                if a <= first < b:
                    start = t
                if a < last <= b:
                    end = t
            if not (start and end and end >= start):
                start = end = 0
        starts.append(start)
        ends.append(end)
    enc["start_positions"] = torch.tensor(starts)
    enc["end_positions"] = torch.tensor(ends)
    return enc, owners


def train(model, enc, minutes: float, epochs: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    n = enc["input_ids"].shape[0]
    steps_total = epochs * ((n + batch - 1) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30) * max(0.0, 1 - s / steps_total))
    model.train()
    began, step, losses = time.monotonic(), 0, []
    for epoch in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            out = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx],
                        token_type_ids=enc["token_type_ids"][idx], start_positions=enc["start_positions"][idx],
                        end_positions=enc["end_positions"][idx])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
            step += 1
            if time.monotonic() - began > minutes * 60:
                return {"steps": step, "epochs": epoch + i / n, "loss": statistics.mean(losses[-20:]),
                        "seconds": time.monotonic() - began}
        print(f"  epoch {epoch + 1}: loss {statistics.mean(losses[-20:]):.3f} ({time.monotonic() - began:.0f} s)", flush=True)
    return {"steps": step, "epochs": epochs, "loss": statistics.mean(losses[-20:]), "seconds": time.monotonic() - began}


@torch.inference_mode()
def read(model, tokenizer, items: list[dict], groups: list[int] | None = None) -> list[tuple[str, float]]:
    """(best span, its score minus the no-answer score) per item over all its windows, or per group of
    items (one question's passages) when `groups` gives each item's group."""
    model.eval()
    groups = groups or list(range(len(items)))
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for i in range(0, len(items), 16):
        chunk = items[i:i + 16]
        enc, owners = features(tokenizer, chunk)
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
        for w, owner in enumerate(owners):
            key = groups[i + owner]
            s, e = out.start_logits[w], out.end_logits[w]
            null[key] = min(null.get(key, float("inf")), (s[0] + e[0]).item())
            sequence = enc.sequence_ids(w)
            context = [t for t, sid in enumerate(sequence) if sid == 1]
            lo, hi = context[0], context[-1]
            scores = s[lo:hi + 1, None] + e[None, lo:hi + 1]
            mask = torch.triu(torch.ones_like(scores, dtype=torch.bool)) & ~torch.triu(
                torch.ones_like(scores, dtype=torch.bool), diagonal=MAX_ANSWER_TOKENS)
            scores = scores.masked_fill(~mask, float("-inf"))
            flat = int(scores.argmax())
            a, b = divmod(flat, scores.shape[1])
            score = scores[a, b].item()
            offsets = enc["offset_mapping"][w].tolist()
            text = chunk[owner]["context"][offsets[lo + a][0]:offsets[lo + b][1]]
            if key not in best or score > best[key][0]:
                best[key] = (score, text)
    return [(best[k][1], best[k][0] - null[k]) for k in sorted(best)]


def rows(answerable: list[float], unanswerable: list[float]) -> list[tuple[float, float, float]]:
    """(threshold, share of unanswerable declined, share of answerable declined) at each cut."""
    out = []
    for t in sorted(set(answerable + unanswerable)):
        out.append((t, sum(u < t for u in unanswerable) / len(unanswerable), sum(a < t for a in answerable) / len(answerable)))
    return out


def pick(cuts, max_false: float) -> float:
    ok = [c for c in cuts if c[2] <= max_false]
    return max(ok, key=lambda c: (c[1], -c[2]))[0] if ok else float("-inf")


def report(name: str, items: list[dict], results: list[tuple[str, float]], threshold: float) -> None:
    ans = [(i, r) for i, r in zip(items, results) if i.get("answerable", True)]
    una = [(i, r) for i, r in zip(items, results) if not i.get("answerable", True)]
    f1_all = statistics.mean(token_f1(r[0], i["answers"]) for i, r in ans)
    f1 = statistics.mean(0.0 if r[1] < threshold else token_f1(r[0], i["answers"]) for i, r in ans)
    em = statistics.mean(0.0 if r[1] < threshold else exact_match(r[0], i["answers"]) for i, r in ans)
    d_una = sum(r[1] < threshold for _, r in una) / max(1, len(una))
    d_ans = sum(r[1] < threshold for _, r in ans) / max(1, len(ans))
    auc = separation_auc([r[1] for _, r in ans], [r[1] for _, r in una])
    print(f"  {name}: {len(ans)} answerable + {len(una)} not; F1 answerable {f1:.1%} (never declining {f1_all:.1%}), "
          f"EM {em:.1%}; declines {d_una:.1%} of unanswerable at {d_ans:.1%} of answerable (threshold {threshold:.2f}); "
          f"AUC {auc:.3f}")


async def retrieve(items: list[dict], index_dir: str) -> list[list[str]]:
    """The passages /ask would pack for each question (hybrid retrieval, the default budget)."""
    from indexer.embedder import load_embedder
    from ragtune.settings import get_settings
    from service.generation import create_generator
    from service.pipeline import build_pipeline
    from service.schema import RetrievalOptions

    settings = get_settings()
    settings.index.dir = Path(index_dir)
    generator = create_generator(settings.generation)
    pipeline = build_pipeline(settings, load_embedder(settings.embedding, settings.index), generator)
    out = []
    for item in items:
        prepared = await pipeline.prepare_async(item["question"], [], RetrievalOptions(), 48)
        out.append([p.text for p in sorted(prepared.passages, key=lambda p: p.number)] or [""])
    await generator.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-false", type=float, default=0.15, help="false declines allowed when picking the threshold")
    parser.add_argument("--save", help="keep the trained reader in this directory")
    parser.add_argument("--load", help="read with a reader saved by --save instead of training one")
    parser.add_argument("--index-dir", help="also read the held-out questions from the passages /ask packs from this index")
    args = parser.parse_args()
    torch.set_num_threads(2)

    items = [i for i in load(args.train) if i.get("context")]
    passages = sorted({i["doc_id"] for i in items})
    random.Random(args.seed).shuffle(passages)
    held = set(passages[: len(passages) // 5])
    fit = [i for i in items if i["doc_id"] not in held]
    dev = [i for i in items if i["doc_id"] in held]
    test = [i for i in load(args.test) if i.get("context")]

    path = args.load or packaged_embedder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    enc, _ = features(tokenizer, fit)
    print(f"reader: all-MiniLM-L6-v2 encoder, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"{len(fit)} training questions ({enc['input_ids'].shape[0]} windows), {len(dev)} to pick the threshold, "
          f"{len(test)} held out", flush=True)
    if not args.load:
        done = train(model, enc, args.minutes, args.epochs, args.batch, args.lr, args.seed)
        print(f"  trained {done['steps']} steps ({done['epochs']:.2f} epochs) in {done['seconds']:.0f} s, loss {done['loss']:.3f}")

    dev_results = read(model, tokenizer, dev)
    cuts = rows([r[1] for i, r in zip(dev, dev_results) if i.get("answerable", True)],
                [r[1] for i, r in zip(dev, dev_results) if not i.get("answerable", True)])
    threshold = pick(cuts, args.max_false)
    report("threshold picked on", dev, dev_results, threshold)
    report("held out, gold passage", test, read(model, tokenizer, test), threshold)
    if args.index_dir:
        packed = asyncio.run(retrieve(test, args.index_dir))
        flat = [{"question": i["question"], "context": text} for i, texts in zip(test, packed) for text in texts]
        groups = [g for g, texts in enumerate(packed) for _ in texts]
        report("held out, the passages /ask packs", test, read(model, tokenizer, flat, groups), threshold)

    # One question against five RAG-sized passages (the packer's budget), as /ask would read it.
    sample = test[:20]
    times = []
    for item in sample:
        others = random.Random(item["id"]).sample(test, 4)
        five = [item] + [{**item, "context": o["context"]} for o in others]
        began = time.perf_counter()
        read(model, tokenizer, five)
        times.append(time.perf_counter() - began)
    print(f"  reading 5 passages: p50 {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms (torch fp32, 2 threads)")
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
