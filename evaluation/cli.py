"""`ragtune eval run` and `ragtune eval squad`: parse, call, print."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ragtune.cli_options import QUERYING, IndexDir, settings_for

err = Console(stderr=True)
out = Console()

eval_app = typer.Typer(help="Measure the customization ramp: zero-shot, RAG, few-shot, adapters.", no_args_is_help=True, rich_markup_mode=None)


@eval_app.command()
def squad(
    squad_file: Annotated[Path, typer.Argument(help="SQuAD JSON (v1.1 or v2.0).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where corpus.jsonl, train.jsonl and test.jsonl go.")],
    test_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of paragraphs whose questions are held out.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seeds the split.")] = 0,
) -> None:
    """Turn SQuAD into a corpus to index and QA halves to train and evaluate on (split by paragraph)."""
    from evaluation.qa import qa_record, split_squad, write_jsonl
    from ragtune.qa import QAError

    try:
        data = json.loads(Path(squad_file).read_text())
        split = split_squad(data, test_fraction, seed)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QAError(f"{squad_file} is not a readable SQuAD JSON file: {exc}") from None
    write_jsonl(out_dir / "corpus.jsonl", split.corpus)
    write_jsonl(out_dir / "train.jsonl", [qa_record(q) for q in split.train])
    write_jsonl(out_dir / "test.jsonl", [qa_record(q) for q in split.test])
    for name, items in (("train", split.train), ("test", split.test)):
        answerable = sum(q.answerable for q in items)
        out.print(f"{out_dir / (name + '.jsonl')}: {len(items)} questions ({answerable} answerable, "
                  f"{len(items) - answerable} unanswerable) on {len({q.doc_id for q in items})} paragraphs")
    out.print(f"{out_dir / 'corpus.jsonl'}: {len(split.corpus)} paragraphs; index it with "
              f"`ragtune index add {out_dir / 'corpus.jsonl'}`")


@eval_app.command("run")
def run_eval(
    qa_file: Annotated[Path, typer.Argument(help="QA JSONL (question, answers, optional doc_id/context/answerable) or SQuAD JSON.")],
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", "-s", help="Repeat for several: zero-shot, rag, few-shot, adapter:<name>, rag+adapter:<name> "
        "[default: zero-shot, rag, and few-shot when there are demonstrations].")] = None,
    demonstrations: Annotated[Optional[Path], typer.Option(help="QA JSONL the few-shot strategy draws from [default: setting fewshot.file].")] = None,
    fewshot_k: Annotated[Optional[int], typer.Option(min=1, max=6, help="Demonstrations per question [default: setting fewshot.k].")] = None,
    url: Annotated[Optional[str], typer.Option(help="Evaluate a running service (its /ask) instead of in-process.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="RAGTUNE_EVAL_API_KEY", help="Bearer key for --url.")] = None,
    top_k: Annotated[Optional[int], typer.Option(min=1, max=100, help="Passages retrieved [default: setting retrieval.top_k].")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer in tokens (SQuAD answers are short).")] = 64,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N questions (after --sample).")] = None,
    sample: Annotated[Optional[int], typer.Option(min=1, help="N questions drawn at random (seeded).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds --sample and generation.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where report.json, report.html and report.md go.")] = Path("ragtune-eval"),
    timeout: Annotated[float, typer.Option(help="Seconds one answer may take with --url.")] = 300.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Answer everything again (default: a run with the same setup reuses the answers kept in --out).")] = False,
    index_dir: IndexDir = None,
    adapters_dir: Annotated[Optional[Path], typer.Option(help="Adapter registry [default: setting adapters.dir].")] = None,
) -> None:
    """Answer a QA set with each strategy and compare: EM, F1, declines, retrieval recall, tokens, latency."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from evaluation import report as reports
    from evaluation.qa import select
    from ragtune.qa import read_qa
    from evaluation.runner import InProcess, Remote, Request, Strategy, run
    from ragtune.errors import UsageError

    settings = settings_for(index_dir, QUERYING)
    if adapters_dir is not None:
        settings.adapters.dir = adapters_dir
    qa = read_qa(qa_file)
    for line, reason in qa.bad[:20]:
        err.print(f"[yellow]{qa_file}:{line}: {reason} (skipped)[/]")
    items = select(qa.items, sample, limit, seed)
    demonstrations = demonstrations or settings.fewshot.file
    names = strategy or ["zero-shot", "rag", *(["few-shot"] if demonstrations else [])]
    strategies = list({s.name: s for s in map(Strategy.parse, names)}.values())
    if any(s.fewshot for s in strategies) and not url and not demonstrations:
        raise UsageError("the few-shot strategy needs demonstrations: --demonstrations FILE (QA JSONL) or setting fewshot.file")
    if not url and any(s.retrieval for s in strategies):  # no index: said before the models load
        from indexer.store import committed_version_dir

        committed_version_dir(settings.index.dir)
    request = Request(top_k=top_k, max_tokens=max_tokens, fewshot_k=fewshot_k or settings.fewshot.k or 3, seed=seed)

    gold = None
    with err.status("Loading models..."):
        if url:
            answerer = Remote(url, request, api_key, timeout)
            if index_dir is not None:  # gold passages given by text can only be found in the index
                from evaluation.gold import GoldIndex
                from indexer.snapshot import IndexSnapshot

                gold = GoldIndex.from_snapshot(IndexSnapshot(settings.index.dir))
        else:
            answerer = InProcess(settings, request, demonstrations)
            gold = answerer.gold_index()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    total = len(items) * len(strategies)
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("answering", total=total)
        logged = {"at": time.monotonic(), "started": time.monotonic(), "done": 0}

        def advance(name: str) -> None:
            progress.update(task, advance=1, description=name)
            logged["done"] += 1
            if not err.is_terminal and (time.monotonic() - logged["at"] > 60 or logged["done"] == total):
                logged["at"] = time.monotonic()  # a log file gets a line a minute instead of a bar
                err.print(f"{name}: {logged['done']}/{total} answers in {logged['at'] - logged['started']:.0f} s")

        run_setup = {"max_tokens": max_tokens, "temperature": 0, "seed": seed, "top_k": top_k or settings.retrieval.top_k,
                     "fewshot_k": request.fewshot_k, "repetition_penalty": settings.generation.repetition_penalty,
                     "frequency_penalty": settings.generation.frequency_penalty,
                     "demonstrations": str(demonstrations) if demonstrations else None,
                     "prompt": settings.prompt.model_dump(), "retrieval": settings.retrieval.model_dump(mode="json")}
        cache = out_dir / "answers.jsonl"
        if fresh:
            cache.unlink(missing_ok=True)
        result = run(answerer, items, strategies, gold, settings.prompt.decline_answer, advance, cache, run_setup)
    if result.reused:
        err.print(f"resumed: {result.reused} answers from {cache} (same setup); --fresh answers everything again")
    setup = {**answerer.describe(), **{k: v for k, v in run_setup.items() if k not in ("prompt", "retrieval")},
             "answerable_check": settings.prompt.answerable_check,
             "answerable_check_model": settings.prompt.answerable_check_model or settings.prompt.answerable_check_model_path,
             "answerable_check_retrieval_weight": settings.prompt.answerable_check_retrieval_weight}
    report = reports.build(result, qa, {"sample": sample, "limit": limit, "seed": seed}, setup,
                           k=top_k or settings.retrieval.top_k)
    paths = reports.write(report, out_dir)
    for warning in setup.get("warnings") or ():
        err.print(f"[yellow]warning:[/] {warning}")
    out.print(reports.table(report))
    out.print(", ".join(f"{what}: {path}" for what, path in paths.items()))
