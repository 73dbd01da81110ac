"""`ragtune finetune train`: a LoRA adapter from JSONL examples, resumable, ready for vLLM.

The loop is plain PyTorch over a PEFT model. Two choices make it faster and lighter than a
generic trainer on this kind of data: batches are grouped by length (little padding),
and the vocabulary projection runs only where there is a label (answers are short next
to RAG prompts, and logits over a 49k vocabulary are most of the activation memory).
The loss is the mean over all answer tokens of an optimizer step, however they fall
into micro-batches.

A run lives in <adapters.dir>/.runs/<name>/: run.json (what the run is), checkpoints
(written whole or not at all), and the final adapter, which is then added to the registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune.data import TrainingData, load_training_data
from finetune.examples import Sequence, encode, with_retrieval
from finetune.loop import Loop
from ragtune.registry import METADATA_FILE, AdapterInfo, Registry, check_name
from ragtune.errors import UsageError
from ragtune.settings import Settings

log = logging.getLogger("ragtune.finetune")
RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainReport:
    name: str
    steps: int
    resumed_from: int
    train_examples: int
    validation_examples: int
    skipped_lines: list[dict]
    train_loss: float | None
    validation_loss_before: float | None
    validation_loss: float | None
    tokens_per_second: float
    seconds: float
    adapter: AdapterInfo | None = None
    retrieval: dict | None = None
    loss_curve: list[float] = field(default_factory=list)


def _base_model_dir(settings: Settings) -> Path | str:
    if settings.finetune.base_model:
        path = Path(settings.finetune.base_model)
        if (path / "config.json").is_file():
            return path
        if not path.exists() and settings.finetune.base_model.count("/") == 1:
            return settings.finetune.base_model  # a hub id: transformers fetches it (where a hub is reachable)
        raise UsageError(f"finetune.base_model {path} is not a Hugging Face model directory (no config.json)")
    from service.generation.model_files import converted_model_dir

    return converted_model_dir(settings.generation)  # the GGUF cannot be trained as loaded; its safetensors copy can


def _split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = int(round(len(items) * fraction)) if len(items) >= 10 else 0
    return [items[i] for i in order[held:]], [items[i] for i in order[:held]]


def _batches(sequences: list[Sequence], batch_size: int, seed: int, epoch: int) -> list[list[Sequence]]:
    """One epoch: shuffled, then sorted by length within windows of 32 batches (little
    padding, still random), then the batches shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(sequences)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(sequences[i].input_ids))
        batches += [[sequences[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class Trainer:
    def __init__(self, settings: Settings, registry: Registry | None = None):
        self.settings = settings
        self.config = settings.finetune
        self.registry = registry or Registry(
            settings.adapters, settings.generation.model, settings.adapters.resolved_base_dir(settings.generation)
        )

    # -- data -------------------------------------------------------------------------
    def sequences(self, data: TrainingData, tokens, retrieval: bool, embedder=None, judge: bool = False):
        examples, report = data.examples, None
        if retrieval:
            examples, report = with_retrieval(examples, self.settings, embedder, tokens, judge)
        sequences, skipped = [], [{"line": b.line, "reason": b.reason} for b in data.bad]
        for example in examples:
            sequence = encode(tokens, list(example.messages), example.line)
            if len(sequence.input_ids) > self.config.max_seq_length:
                skipped.append({"line": example.line, "reason": f"{len(sequence.input_ids)} tokens, over finetune.max_seq_length {self.config.max_seq_length}"})
            elif sequence.target_tokens == 0:
                skipped.append({"line": example.line, "reason": "no answer tokens left to learn"})
            else:
                sequences.append(sequence)
        if not sequences:
            raise UsageError(f"no example of {data.path} can be trained on: " + "; ".join(f"line {s['line']}: {s['reason']}" for s in skipped[:3]))
        return sequences, skipped, report

    # -- the run ------------------------------------------------------------------------
    def run(self, data_path: Path, name: str, *, retrieval: bool = False, restart: bool = False,
            publish: bool | None = None, embedder=None, progress: bool = True, judge: bool = False) -> TrainReport:
        """judge: train the answerability check's judge (QA pairs with retrieval; finetune/examples.py)."""
        if judge and not retrieval:  # said before anything loads
            raise UsageError("--judge learns from the passages the service retrieves: add --with-retrieval")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from service.generation.tokens import ChatTokens

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # deprecation notes, not ours
        check_name(name)
        started = time.perf_counter()
        data = load_training_data(Path(data_path), self.settings.prompt)
        model_dir = _base_model_dir(self.settings)
        tokens = ChatTokens(AutoTokenizer.from_pretrained(model_dir))
        if retrieval and embedder is None:
            from indexer.embedder import load_embedder

            embedder = load_embedder(self.settings.embedding, self.settings.index)
        sequences, skipped, retrieval_report = self.sequences(data, tokens, retrieval, embedder, judge)
        train_set, validation_set = _split(sequences, self.config.validation_fraction, self.config.seed)

        identity = {
            "data_sha256": data.sha256, "retrieval": retrieval, "base_model": str(model_dir),
            "index_versions": sorted(retrieval_report.index_versions) if retrieval_report else None,
            "finetune": self.config.model_dump(mode="json", exclude={"layers"} if self.config.layers is None else None),
            "prompt": self.settings.prompt.model_dump(mode="json"),
        }
        if judge:  # only then, so that runs from before the option keep their fingerprint
            identity["judge"] = True
        run_dir = self._run_dir(name, identity, restart)

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            self.config.dtype, torch.bfloat16 if device == "cuda" else torch.float32
        )
        torch.manual_seed(self.config.seed)
        model = self._peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)
        per_epoch = math.ceil(math.ceil(len(train_set) / self.config.batch_size) / self.config.gradient_accumulation)
        total = self.config.max_steps or max(1, math.ceil(per_epoch * self.config.epochs))
        warmup = int(total * self.config.warmup_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / (warmup + 1), max(0.0, (total - step) / max(1, total - warmup)))
        )
        pad = tokens.tokenizer.pad_token_id if tokens.tokenizer.pad_token_id is not None else tokens.tokenizer.eos_token_id
        loop = Loop(model, device, pad)
        if frozen := self._frozen_layers(model.config.num_hidden_layers):
            loop.freeze_below(frozen, train_set + validation_set, self.config.batch_size)

        validation_before = loop.loss(validation_set, self.config.batch_size) if validation_set else None
        state = {"step": 0, "losses": [], "tokens": 0, "seconds": 0.0}
        resumed_from = self._resume(run_dir, model, optimizer, scheduler, state)
        micro = self._micro_batches(train_set, state["step"])
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        # A terminal gets a live bar; a log (a Job, CI, a pipe) gets a plain line every ~5% of the run,
        # where a bar would only be drawn once, at the end.
        log_every = max(1, total // 20) if progress and not console.is_terminal else 0
        columns = (TextColumn(f"training {name}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=not progress or bool(log_every), transient=False) as bar:
            task = bar.add_task("train", total=total, completed=state["step"], loss="-", tps="-")
            model.train()
            while state["step"] < total:
                step_started = time.perf_counter()
                group = [next(micro) for _ in range(self.config.gradient_accumulation)]
                targets = sum(s.target_tokens for batch in group for s in batch)
                loss_sum, seen = 0.0, 0
                for batch in group:
                    loss, count = loop.forward(batch)
                    (loss / targets).backward()
                    loss_sum += loss.item()
                    seen += count
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["losses"].append(loss_sum / targets)
                state["tokens"] += seen
                state["seconds"] += time.perf_counter() - step_started
                loss_text, tps = f"{state['losses'][-1]:.3f}", f"{state['tokens'] / max(state['seconds'], 1e-9):,.0f}"
                bar.update(task, completed=state["step"], loss=loss_text, tps=tps)
                if log_every and (state["step"] % log_every == 0 or state["step"] == total):
                    console.print(f"training {name}: step {state['step']}/{total}, loss {loss_text}, {tps} tok/s", highlight=False)
                if state["step"] % self.config.save_every == 0 or state["step"] == total:
                    self._checkpoint(run_dir, model, optimizer, scheduler, state)

        model.eval()
        validation = loop.loss(validation_set, self.config.batch_size) if validation_set else None
        recent = state["losses"][-max(1, per_epoch):]
        report = TrainReport(
            name=name, steps=state["step"], resumed_from=resumed_from, train_examples=len(train_set),
            validation_examples=len(validation_set), skipped_lines=skipped,
            train_loss=sum(recent) / len(recent) if recent else None,
            validation_loss_before=validation_before, validation_loss=validation,
            tokens_per_second=state["tokens"] / max(state["seconds"], 1e-9), seconds=time.perf_counter() - started,
            retrieval=retrieval_report.as_dict(judge) if retrieval_report else None,
            loss_curve=[round(x, 4) for x in state["losses"]],
        )
        adapter_dir = self._save_adapter(run_dir, model, report, identity, data)
        report.adapter = self.registry.add(name, adapter_dir, publish)
        return report

    # -- pieces -------------------------------------------------------------------------
    def _peft_model(self, model):
        from peft import LoraConfig, get_peft_model

        missing = [m for m in self.config.target_modules if not any(n.endswith(f".{m}") for n, _ in model.named_modules())]
        if missing:
            raise UsageError(f"finetune.target_modules {missing} are not layers of this model; check the names")
        depth = model.config.num_hidden_layers
        frozen = self._frozen_layers(depth)
        config = LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
            target_modules=list(self.config.target_modules), bias="none", task_type="CAUSAL_LM",
            layers_to_transform=list(range(frozen, depth)) if frozen else None,
        )
        return get_peft_model(model, config)

    def _frozen_layers(self, depth: int) -> int:
        """How many of the model's bottom layers finetune.layers leaves without an adapter."""
        if self.config.layers and self.config.layers > depth:
            raise UsageError(f"finetune.layers is {self.config.layers}, and this model has {depth} layers")
        return depth - self.config.layers if self.config.layers else 0

    def _run_dir(self, name: str, identity: dict, restart: bool) -> Path:
        run_dir = self.registry.root / ".runs" / name
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        recorded = run_dir / RUN_FILE
        if recorded.exists() and not restart:
            if json.loads(recorded.read_text()).get("fingerprint") != fingerprint:
                raise UsageError(
                    f"{run_dir} holds a run of {name!r} with other data or settings; pass --restart to discard it, "
                    "or train under another name"
                )
        elif recorded.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not recorded.exists():
            recorded.write_text(json.dumps({"fingerprint": fingerprint, **identity}, indent=2))
        return run_dir

    def _micro_batches(self, train_set: list[Sequence], done_steps: int):
        """Endless micro-batches, epoch after epoch; the first done_steps' worth skipped (resume)."""
        skip = done_steps * self.config.gradient_accumulation
        epoch = 0
        while True:
            for batch in _batches(train_set, self.config.batch_size, self.config.seed, epoch):
                if skip:
                    skip -= 1
                    continue
                yield batch
            epoch += 1

    def _checkpoint(self, run_dir: Path, model, optimizer, scheduler, state: dict) -> None:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = run_dir / "checkpoints"
        target = folder / f"step-{state['step']:07d}"
        staging = folder / f".step-{state['step']:07d}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, staging / "adapter.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "python_rng": random.getstate()}, staging / "optimizer.pt")
        (staging / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # a checkpoint is whole or absent, whenever the process dies
        for old in sorted(p for p in folder.iterdir() if p.name.startswith("step-"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, run_dir: Path, model, optimizer, scheduler, state: dict) -> int:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = run_dir / "checkpoints"
        found = sorted(p for p in folder.iterdir() if p.name.startswith("step-")) if folder.is_dir() else []
        if not found:
            return 0
        latest = found[-1]
        set_peft_model_state_dict(model, load_file(latest / "adapter.safetensors"))
        saved = torch.load(latest / "optimizer.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        random.setstate(saved["python_rng"])
        state.update(json.loads((latest / STATE_FILE).read_text()))
        log.warning("resuming %s from step %d", run_dir.name, state["step"])
        return state["step"]

    def _save_adapter(self, run_dir: Path, model, report: TrainReport, identity: dict, data: TrainingData) -> Path:
        target = run_dir / "adapter"
        shutil.rmtree(target, ignore_errors=True)
        model.save_pretrained(target)
        (target / "README.md").unlink(missing_ok=True)
        config_path = target / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = self.settings.generation.model  # the served name, never a local path
        config_path.write_text(json.dumps(config, indent=2))
        metadata = {
            "name": report.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": self.settings.generation.model, "trained_on": identity["base_model"],
            "data": {"path": str(data.path), "sha256": data.sha256, "bytes": data.size_bytes, "kinds": data.kinds,
                     "bad_lines": len(data.bad)},
            "retrieval_aware": identity["retrieval"], "index_versions": identity["index_versions"],
            "settings": identity["finetune"],
            "metrics": {k: v for k, v in asdict(report).items() if k not in ("adapter", "skipped_lines", "name")},
        }
        (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        return target
