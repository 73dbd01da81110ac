"""The `ragtune` command: each part contributes its sub-commands; errors are translated here."""

from __future__ import annotations

import sys

import typer

from evaluation.cli import eval_app
from finetune.cli import adapters_app, finetune_app
from indexer.cli import app as index_app
from service.cli import ask, serve
from ragtune.errors import RagtuneError

app = typer.Typer(
    help="Answer questions over your own documents with open-weight LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")
app.command()(serve)
app.command()(ask)
app.add_typer(finetune_app, name="finetune")
app.add_typer(adapters_app, name="adapters")
app.add_typer(eval_app, name="eval")


def main() -> None:
    """Console entry point. Usage errors are click's (exit 2); domain errors become one
    line on stderr and their own exit code."""
    try:
        app()
    except RagtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
