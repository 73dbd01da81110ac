"""Fine-tuning benchmark. Prints figures; asserts nothing.

1. `ragtune finetune train` (finetune/train.py) against a plain transformers `Trainer` +
   PEFT run: the same model (the embedded SmolLM2-135M), the same LoRA settings, the same
   tokenized examples (SQuAD questions with their paragraph, answer-only labels), batch
   size, learning rate and number of steps. Each run is its own process, so peak memory
   (max RSS) is its own; the two alternate for `--rounds` rounds and medians are printed.
   Tokens/s counts real (non-padding) tokens over the training loop's time. Target: ragtune
   / Trainer >= 1.0 for tokens/s.
   A third variant trains only the top `--layers` layers (finetune.layers: the frozen layers'
   output computed once per example, then reused): its tokens/s over the loop, and its whole
   run's seconds (model load and that one forward included), against all layers.
2. The time to hot-load an adapter into the embedded engine (and to unload it).

    python bench/finetune.py [--examples 64] [--steps 16] [--batch-size 4] [--rounds 2] [--layers 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SQUAD = REPO.parent / "shared" / "data" / "squad-v2-dev-5articles.json"


def write_data(path: Path, count: int) -> None:
    squad = json.loads(SQUAD.read_text())["data"]
    rows = [
        {"question": qa["question"], "answer": qa["answers"][0]["text"], "context": p["context"]}
        for a in squad for p in a["paragraphs"] for qa in p["qas"] if qa["answers"]
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:count]) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ragtune(data: Path, args, layers: int | None = None) -> dict:
    from finetune.train import Trainer
    from ragtune.settings import get_settings

    with tempfile.TemporaryDirectory() as registry:
        settings = get_settings(
            adapters={"dir": registry},
            finetune={"max_steps": args.steps, "batch_size": args.batch_size, "validation_fraction": 0.0,
                      "save_every": 10_000, "learning_rate": 2e-4, "layers": layers},
        )
        report = Trainer(settings).run(data, "bench", progress=False)
        return {"tokens_per_second": report.tokens_per_second, "peak_rss_mb": peak_rss_mb(),
                "mean_loss": statistics.mean(report.loss_curve), "seconds": report.seconds}


def run_trainer(data: Path, args) -> dict:
    """The plain way: transformers Trainer over a PEFT model, default collator padding."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from finetune.data import load_training_data
    from finetune.examples import encode
    from ragtune.settings import get_settings
    from service.generation.model_files import converted_model_dir
    from service.generation.tokens import ChatTokens

    settings = get_settings()
    model_dir = converted_model_dir(settings.generation)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = ChatTokens(tokenizer)
    examples = load_training_data(data, settings.prompt).examples
    rows = [encode(tokens, list(e.messages), e.line) for e in examples]
    dataset = [{"input_ids": r.input_ids, "attention_mask": [1] * len(r.input_ids), "labels": r.labels} for r in rows]
    real_tokens = 0

    class Counting(DataCollatorForSeq2Seq):
        def __call__(self, features, return_tensors=None):
            nonlocal real_tokens
            real_tokens += sum(len(f["input_ids"]) for f in features)
            return super().__call__(features, return_tensors)

    torch.manual_seed(0)
    config = settings.finetune
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                   target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM"),
    )
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=2e-4,
            warmup_steps=int(args.steps * config.warmup_fraction), lr_scheduler_type="linear", save_strategy="no",
            report_to=[], logging_steps=args.steps, seed=0, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, max_grad_norm=1.0, weight_decay=0.0,
        )
        trainer = Trainer(model=model, args=training, train_dataset=dataset,
                          data_collator=Counting(tokenizer, padding=True, label_pad_token_id=-100))
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    return {"tokens_per_second": real_tokens / seconds, "peak_rss_mb": peak_rss_mb(), "mean_loss": result.training_loss}


def hot_load(rounds: int) -> None:
    """Train a tiny adapter, then time loading and unloading it in the embedded engine."""
    import asyncio

    from finetune.train import Trainer
    from ragtune.settings import get_settings
    from service.generation.local import LocalGenerator

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d.jsonl"
        write_data(data, 8)
        settings = get_settings(adapters={"dir": tmp}, finetune={"max_steps": 1, "validation_fraction": 0.0})
        adapter = Trainer(settings).run(data, "probe", progress=False).adapter
        generator = LocalGenerator(settings.generation)

        async def timings():
            loads, unloads = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                report = await generator.sync_adapters({"probe": adapter.path})
                loads.append(time.perf_counter() - started)
                assert report.loaded == ["probe"], report
                started = time.perf_counter()
                await generator.sync_adapters({})
                unloads.append(time.perf_counter() - started)
            return loads, unloads

        loads, unloads = asyncio.run(timings())
    print(f"\n== hot-load into the embedded engine (rank {settings.finetune.rank}, median of {rounds})")
    print(f"  load    {statistics.median(loads) * 1000:8.1f} ms")
    print(f"  unload  {statistics.median(unloads) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, default=10, help="the top-layers variant's finetune.layers")
    parser.add_argument("--variant", choices=["ragtune", "trainer", "top"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # one run in this process: print its figures as JSON
        if args.variant == "trainer":
            result = run_trainer(args.data, args)
        else:
            result = run_ragtune(args.data, args, args.layers if args.variant == "top" else None)
        print(json.dumps(result))
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "squad-qa.jsonl"
        write_data(data, args.examples)
        print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}; {args.examples} SQuAD QA pairs with "
              f"their paragraph, {args.steps} steps of batch {args.batch_size}")
        runs: dict[str, list[dict]] = {"ragtune": [], "trainer": [], "top": []}
        for _ in range(args.rounds):
            for variant in runs:
                done = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--data", str(data), "--steps", str(args.steps),
                     "--batch-size", str(args.batch_size), "--layers", str(args.layers)],
                    capture_output=True, text=True, check=True,
                )
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n== training, median of {args.rounds} runs each")
    figures = {}
    for variant, label in (("trainer", "transformers Trainer + PEFT"), ("ragtune", "ragtune finetune train")):
        tps = statistics.median(r["tokens_per_second"] for r in runs[variant])
        rss = statistics.median(r["peak_rss_mb"] for r in runs[variant])
        loss = statistics.median(r["mean_loss"] for r in runs[variant])
        figures[variant] = (tps, rss)
        print(f"  {label:28} {tps:8.1f} tokens/s   peak RSS {rss:7.0f} MB   mean train loss {loss:.3f}")
    (t_tps, t_rss), (r_tps, r_rss) = figures["trainer"], figures["ragtune"]
    print(f"  ragtune / Trainer: tokens/s {r_tps / t_tps:.2f}x (target >= 1.0), peak memory {r_rss / t_rss:.2f}x")
    top = {k: statistics.median(r[k] for r in runs["top"]) for k in ("tokens_per_second", "peak_rss_mb", "mean_loss", "seconds")}
    whole = statistics.median(r["seconds"] for r in runs["ragtune"])
    print(f"  ragtune, top {args.layers} layers only  {top['tokens_per_second']:8.1f} tokens/s   peak RSS "
          f"{top['peak_rss_mb']:7.0f} MB   mean train loss {top['mean_loss']:.3f}")
    print(f"  top {args.layers} layers / all layers: tokens/s {top['tokens_per_second'] / r_tps:.2f}x, whole run "
          f"{top['seconds']:.0f} s vs {whole:.0f} s ({whole / top['seconds']:.2f}x)")
    hot_load(5)


if __name__ == "__main__":
    main()
