"""`instructsd quickstart`: the whole system end to end on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def quickstart_cmd(
    out: Path = typer.Option(Path("runs/quickstart"), help="Run folder (replaced if it exists)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the tiny-cpu preset's)."),
    vae_steps: Optional[int] = typer.Option(None, help="Autoencoder fitting steps (default: the quickstart's)."),
) -> None:
    """The whole system on CPU in minutes: data → tiny model → train → edit → eval → report."""
    from instructsd.quickstart import run_quickstart

    report = run_quickstart(out, train_steps=steps, vae_steps=vae_steps)
    typer.echo(f"report: {report.resolve()}")
