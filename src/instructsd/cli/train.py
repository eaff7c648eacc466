"""`instructsd train`: fine-tune an InstructPix2Pix model."""

from __future__ import annotations

import os
from typing import List, Optional

import typer


def train_cmd(
    config: str = typer.Argument(..., help="Preset name (tiny-cpu, sd15-256) or YAML file."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. base_model=runs/tiny dataset=runs/data."),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="Stop after this step with a checkpoint (for time-limited jobs); continue with resume=latest."),
) -> None:
    """Fine-tune an InstructPix2Pix model (works under `accelerate launch` too)."""
    from instructsd.config import load_config
    from instructsd.train.config import TrainConfig
    from instructsd.train.recipe import train

    cfg = load_config(TrainConfig, config, overrides or [])
    result = train(cfg, stop_at=stop_at)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun only rank 0 reports
        return
    if stop_at is not None and (not result.losses or result.losses[-1][0] < cfg.max_train_steps):
        typer.echo(f"stopped at step {result.losses[-1][0] if result.losses else 0}; continue with resume=latest")
        return
    typer.echo(f"saved {result.final_dir}" + (f" (LoRA adapters in {result.lora_dir})" if result.lora_dir else ""))
