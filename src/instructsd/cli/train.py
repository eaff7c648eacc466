"""`instructsd train`: fine-tune an InstructPix2Pix model."""

from __future__ import annotations

from typing import List, Optional

import typer


def train_cmd(
    config: str = typer.Argument(..., help="Preset name (tiny-cpu, sd15-256) or YAML file."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. base_model=runs/tiny dataset=runs/data."),
) -> None:
    """Fine-tune an InstructPix2Pix model (works under `accelerate launch` too)."""
    from instructsd.config import load_config
    from instructsd.train.config import TrainConfig
    from instructsd.train.recipe import train

    cfg = load_config(TrainConfig, config, overrides or [])
    result = train(cfg)
    typer.echo(f"saved {result.final_dir}")
