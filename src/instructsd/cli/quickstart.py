"""`instructsd quickstart`: the post's comparison in miniature, end to end on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def quickstart_cmd(
    out: Path = typer.Option(Path("runs/quickstart"), help="Run folder (replaced if it exists)."),
    steps: Optional[int] = typer.Option(None, help="Training steps for each of the two starts (default: the quickstart's)."),
    base: Optional[Path] = typer.Option(None, help="Instruction-following base to fine-tune (default: the tiny base shipped with instructsd)."),
) -> None:
    """Fine-tune the shipped tiny base on an unseen task, beside a 4-channel start: curves, metrics, report."""
    from instructsd.recipes.quickstart import run_quickstart

    report = run_quickstart(out, train_steps=steps, base=base)
    typer.echo(f"report: {report.resolve()}")
