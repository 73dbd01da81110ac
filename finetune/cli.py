"""`ragtune finetune train` and `ragtune adapters list|show|load|unload|delete`: parse, call, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ragtune.cli_options import TRAINING, IndexDir, settings_for
from ragtune.errors import UsageError

err = Console(stderr=True)
out = Console()

AdaptersDir = Annotated[
    Optional[Path], typer.Option("--adapters-dir", help="Adapter registry [default: setting adapters.dir, env RAGTUNE_ADAPTERS__DIR].")
]

finetune_app = typer.Typer(help="Train LoRA adapters (PEFT) on your examples.", no_args_is_help=True, rich_markup_mode=None)
adapters_app = typer.Typer(help="The adapter registry: what the service and vLLM serve.", no_args_is_help=True, rich_markup_mode=None)


def _settings(index_dir: Path | None = None, adapters_dir: Path | None = None, sections=TRAINING):
    settings = settings_for(index_dir, sections)
    if adapters_dir is not None:
        settings.adapters.dir = adapters_dir
    return settings


def _registry(adapters_dir: Path | None):
    from ragtune.registry import Registry

    settings = _settings(adapters_dir=adapters_dir, sections=("adapters", "generation", "log"))
    return Registry(settings.adapters, settings.generation.model, settings.adapters.resolved_base_dir(settings.generation))


@finetune_app.command()
def train(
    data: Annotated[Path, typer.Argument(help="JSONL examples: chat messages, prompt/completion, instruction/output, or question/answer.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name (letters, digits, . _ -); what requests put in `model`.")],
    with_retrieval: Annotated[bool, typer.Option("--with-retrieval", help="Prompt QA pairs exactly as /ask would, with passages from the index.")] = False,
    judge: Annotated[bool, typer.Option("--judge", help="With --with-retrieval: train the answerability check's judge (reply Yes when the passages hold the answer, else No); serve it with RAGTUNE_PROMPT__ANSWERABLE_CHECK_MODEL.")] = False,
    publish: Annotated[Optional[bool], typer.Option("--publish/--no-publish", help="Publish when done [default: keep the adapter's current state; new ones are not published].")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an earlier run of this name instead of resuming it.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps [default: setting finetune.max_steps, else epochs].")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the data [default: setting finetune.epochs].")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank [default: setting finetune.rank].")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Peak learning rate [default: setting finetune.learning_rate].")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Adapt only the last N layers, several times faster [default: setting finetune.layers, else all].")] = None,
    base_model: Annotated[Optional[Path], typer.Option(help="Hugging Face model directory [default: the embedded model].")] = None,
    index_dir: IndexDir = None,
    adapters_dir: AdaptersDir = None,
) -> None:
    """Train a LoRA adapter and add it to the registry (resumes an interrupted run of the same name)."""
    from finetune.train import Trainer

    from ragtune.registry import check_name

    if not data.is_file():  # said before the model loads
        raise UsageError(f"training data {data} does not exist (expected a JSONL file)")
    check_name(name)
    settings = _settings(index_dir, adapters_dir)
    if with_retrieval:
        from indexer.store import committed_version_dir

        committed_version_dir(settings.index.dir)
    overrides = {"max_steps": max_steps, "epochs": epochs, "rank": rank, "learning_rate": learning_rate,
                 "layers": layers, "base_model": str(base_model) if base_model else None}
    settings.finetune = settings.finetune.model_validate(
        {**settings.finetune.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    )
    report = Trainer(settings).run(data, name, retrieval=with_retrieval, restart=restart, publish=publish, judge=judge)
    for skipped in report.skipped_lines[:20]:
        err.print(f"[yellow]skipped[/] {data}:{skipped['line']}: {skipped['reason']}")
    if len(report.skipped_lines) > 20:
        err.print(f"[yellow]... and {len(report.skipped_lines) - 20} more skipped lines[/]")
    if report.resumed_from:
        err.print(f"resumed from step {report.resumed_from}")
    before, after = report.validation_loss_before, report.validation_loss
    out.print(f"trained {name}: {report.steps} steps on {report.train_examples} examples, "
              f"{report.tokens_per_second:,.0f} tokens/s, train loss {report.train_loss:.3f}")
    if after is not None:
        out.print(f"validation loss {before:.3f} -> {after:.3f} ({report.validation_examples} held-out examples)")
    if report.retrieval:
        out.print(f"{'judge' if judge else 'retrieval-aware'} targets: {report.retrieval}")
    adapter = report.adapter
    out.print(f"adapter {adapter.name} version {adapter.version} at {adapter.path} "
              f"({'published' if adapter.published else 'not published: ragtune adapters load ' + adapter.name})")


@adapters_app.command("list")
def list_adapters(adapters_dir: AdaptersDir = None) -> None:
    """Adapters in the registry, and which are published (served)."""
    adapters = _registry(adapters_dir).list(details=True)
    if not adapters:
        out.print("no adapters; train one with `ragtune finetune train DATA --name NAME`")
        return
    table = Table("name", "published", "version", "rank", "validation loss", "path")
    for a in adapters:
        loss = ((a.metadata or {}).get("metrics") or {}).get("validation_loss")
        table.add_row(a.name, "yes" if a.published else "no", a.version, str(a.rank), f"{loss:.3f}" if loss is not None else "-", str(a.path))
    out.print(table)


@adapters_app.command()
def add(
    directory: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors), from ragtune or elsewhere (PEFT, Axolotl, Unsloth).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name (letters, digits, . _ -); what requests put in `model`.")],
    publish: Annotated[bool, typer.Option("--publish/--no-publish", help="Publish it at once.")] = False,
    adapters_dir: AdaptersDir = None,
) -> None:
    """Import an adapter trained elsewhere: checked (config, tensor names and shapes against the base model) and copied in as a new version."""
    adapter = _registry(adapters_dir).add(name, directory, publish)
    state = "published" if adapter.published else f"not published: ragtune adapters load {adapter.name}"
    out.print(f"added {adapter.name} version {adapter.version} (rank {adapter.rank}) at {adapter.path} ({state})")


@adapters_app.command()
def show(name: str, adapters_dir: AdaptersDir = None) -> None:
    """One adapter: its registry entry and training metadata, as JSON."""
    adapter = _registry(adapters_dir).get(name)
    out.print_json(json.dumps({**adapter.as_dict(), "metadata": adapter.metadata}))


@adapters_app.command()
def load(name: str, adapters_dir: AdaptersDir = None) -> None:
    """Publish an adapter (validated first): running services load it within adapters.sync_seconds."""
    adapter = _registry(adapters_dir).set_published(name, True)
    out.print(f"published {adapter.name} ({adapter.version}); services pick it up within seconds")


@adapters_app.command()
def unload(name: str, adapters_dir: AdaptersDir = None) -> None:
    """Withdraw an adapter: services stop serving it (its files stay)."""
    adapter = _registry(adapters_dir).set_published(name, False)
    out.print(f"unpublished {adapter.name}")


@adapters_app.command()
def delete(name: str, adapters_dir: AdaptersDir = None) -> None:
    """Withdraw an adapter and delete its files."""
    _registry(adapters_dir).delete(name)
    out.print(f"deleted {name}")
