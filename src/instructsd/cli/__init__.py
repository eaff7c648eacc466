"""The ``instructsd`` command line: thin subcommands over the library, one module per stage.

Each subcommand imports its library code lazily, so ``instructsd --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from instructsd.cli import config, data, edit, evaluate, model, quickstart, train
from instructsd.errors import InstructSDError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Instruction-tune Stable Diffusion to follow image edits.")
app.add_typer(data.app, name="data")
app.add_typer(model.app, name="model")
app.add_typer(config.app, name="config")
app.command("train")(train.train_cmd)
app.command("edit")(edit.edit_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("quickstart")(quickstart.quickstart_cmd)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user errors become one line on stderr."""
    import click

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=False, prog_name="instructsd")
    except InstructSDError as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        return 130
    return 0


def main() -> None:
    sys.exit(run())
