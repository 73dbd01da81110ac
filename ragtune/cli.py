"""The `ragtune` command: each part contributes its sub-commands; errors are translated here."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from evaluation.cli import eval_app
from finetune.cli import adapters_app, finetune_app
from indexer.cli import app as index_app
from ragtune import __version__
from ragtune.configure import configure_logging, load_settings, unknown_variables
from ragtune.errors import RagtuneError
from service.cli import ask, serve

app = typer.Typer(
    help="Answer questions over your own documents with open-weight LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "[default: ...]" stays visible
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"ragtune {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Logging is set up once, from the log.* settings, before any command runs."""
    settings = load_settings(["log"], warn=False)
    configure_logging(settings.log.level, settings.log.format)
    for warning in unknown_variables():
        typer.echo(f"warning: {warning}", err=True)


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
