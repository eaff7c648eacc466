"""The ``instructsd`` command line: thin subcommands over the library, one module per stage.

Each subcommand imports its library code lazily, so ``instructsd --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

# Before torch loads libgomp: its worker threads otherwise spin while they wait, and on a CPU shared
# with other work a training step then runs several times slower (benchmarks/RESULTS.md, "CPU threads").
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from instructsd.cli import bench, compare, config, data, demo, edit, evaluate, experiment, model, quickstart, train
from instructsd.errors import InstructSDError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Instruction-tune Stable Diffusion to follow image edits.")
app.add_typer(data.app, name="data")
app.add_typer(model.app, name="model")
app.add_typer(config.app, name="config")
app.add_typer(bench.app, name="bench")
app.command("train")(train.train_cmd)
app.command("edit")(edit.edit_cmd)
app.command("demo")(demo.demo_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("compare", context_settings=compare.CONTEXT)(compare.compare_cmd)
app.command("experiment")(experiment.experiment_cmd)
app.command("quickstart")(quickstart.quickstart_cmd)


def _click_errors() -> tuple[tuple, tuple, tuple]:
    """(exit, usage, abort) exception types from click and from typer's vendored click."""
    import click

    modules = [click.exceptions]
    for name in ("typer.exceptions", "typer._click.exceptions"):  # typer >= 0.25 vendors click
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass

    def collect(attr: str) -> tuple:
        return tuple({getattr(m, attr) for m in modules if isinstance(getattr(m, attr, None), type)})

    return collect("Exit"), collect("ClickException"), collect("Abort")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user errors become one line on stderr."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    exit_types, usage_types, abort_types = _click_errors()
    try:
        app(args=argv, standalone_mode=False, prog_name="instructsd")
    except InstructSDError as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    except exit_types as exit_:
        return exit_.exit_code
    except usage_types as err:
        err.show()
        return err.exit_code
    except abort_types:
        typer.echo("aborted", err=True)
        return 130
    return 0


def main() -> None:
    sys.exit(run())
