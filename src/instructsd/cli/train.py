"""`instructsd train`: fine-tune an InstructPix2Pix model."""

from __future__ import annotations

import os
from typing import List, Optional

import typer


def train_cmd(
    config: Optional[str] = typer.Argument(None, help="Preset name (tiny-cpu, sd15-256) or YAML file; none with --from-diffusers-args."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. base_model=runs/tiny dataset=runs/data."),
    stop_at: Optional[int] = typer.Option(None, "--stop-at", help="Stop after this step with a checkpoint (for time-limited jobs); continue with resume=latest."),
    from_diffusers_args: bool = typer.Option(
        False, "--from-diffusers-args",
        help="Take the config from diffusers' train_instruct_pix2pix.py flags, given after `--` "
             "([key=value ...] -- --flag value ...); prints the translation, then trains."),
) -> None:
    """Fine-tune an InstructPix2Pix model (works under `accelerate launch` too)."""
    from instructsd.config import load_config
    from instructsd.errors import InstructSDError
    from instructsd.train.config import TrainConfig
    from instructsd.train.loop import train

    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun only rank 0 reports
    if from_diffusers_args:
        from instructsd.train.diffusers_args import config_from_tokens

        # Every rank translates (they must agree on the config); WORLD_SIZE is what --scale_lr and
        # --num_train_epochs multiply or divide by, as the script's accelerator.num_processes.
        tokens = ([config] if config else []) + list(overrides or [])
        cfg, translation = config_from_tokens(tokens, num_processes=int(os.environ.get("WORLD_SIZE", "1")))
        if main_process:
            typer.echo(translation.report())
    elif config is None:
        raise InstructSDError("give a preset (tiny-cpu, sd15-256, sd15-256-lora) or a YAML file, "
                              "or --from-diffusers-args -- with train_instruct_pix2pix.py flags")
    else:
        cfg = load_config(TrainConfig, config, overrides or [])
    result = train(cfg, stop_at=stop_at)
    if not main_process:
        return
    if result.skipped_images:
        typer.echo(f"skipped {result.skipped_images} training row(s) whose images failed to decode; "
                   f"see {result.final_dir.parent / 'skipped_rows.jsonl'}", err=True)
    if stop_at is not None and (not result.losses or result.losses[-1][0] < cfg.max_train_steps):
        typer.echo(f"stopped at step {result.losses[-1][0] if result.losses else 0}; continue with resume=latest")
        return
    typer.echo(f"saved {result.final_dir}" + (f" (LoRA adapters in {result.lora_dir})" if result.lora_dir else ""))
