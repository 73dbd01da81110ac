"""The `ragtune` command: each part contributes its sub-commands; errors are translated here."""

from __future__ import annotations

import sys

import typer

from indexer.cli import app as index_app
from ragtune.errors import RagtuneError

app = typer.Typer(help="Answer questions over your own documents with open-weight LLMs.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def main() -> None:
    """Console entry point: domain errors become one line on stderr and an exit code."""
    try:
        app(standalone_mode=False)
    except RagtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
