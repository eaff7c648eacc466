"""`instructsd model …`: make and inspect models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Make and inspect models.")


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """--overwrite replaces only a model folder instructsd wrote (its marker), never anything else (issue 17)."""
    from instructsd.errors import InstructSDError
    from instructsd.files import OUTPUT_MARKER, is_output_folder

    if overwrite and out.is_dir() and any(out.iterdir()) and not is_output_folder(out):
        raise InstructSDError(
            f"'{out}' was not written by instructsd (no {OUTPUT_MARKER} marker); --overwrite replaces only "
            "instructsd's own model folders, so delete it yourself or choose another folder"
        )


def _mark(out: Path, command: str) -> None:
    from instructsd.files import mark_output_folder

    mark_output_folder(out, f"instructsd model {command}")


@app.command("init-tiny")


def model_init_tiny(
    out: Path = typer.Argument(..., help="Folder to write the diffusers model to."),
    in_channels: int = typer.Option(8, help="8: InstructPix2Pix layout; 4: plain Stable Diffusion layout."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Write a tiny random-weight model (UNet, VAE, CLIP text encoder, BPE tokenizer, scheduler)."""
    from instructsd.models.tiny import init_tiny

    _check_replaceable(out, overwrite)
    init_tiny(out, in_channels=in_channels, seed=seed, overwrite=overwrite)
    _mark(out, "init-tiny")
    typer.echo(f"wrote {out} ({in_channels}-channel UNet)")


@app.command("init-hub")
def model_init_hub(
    out: Path = typer.Argument(..., help="Folder to write the diffusers model to."),
    layout: str = typer.Option(..., help="instruct-pix2pix (timbrooks/instruct-pix2pix), sd15 (runwayml/stable-diffusion-v1-5), sdxl-instruct-pix2pix (diffusers/sdxl-instructpix2pix-768) or sdxl (stabilityai/stable-diffusion-xl-base-1.0)."),
    size: str = typer.Option("tiny", help="tiny: the hub's structure and keys, small widths; full: SD 1.5's exact sizes (~4 GB RAM)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Write a random-weight model laid out exactly like a hub checkpoint (CLIP tokenizer, safety checker, sampler)."""
    from instructsd.models.hub_layout import write_hub_model

    _check_replaceable(out, overwrite)
    write_hub_model(out, layout, size=size, seed=seed, overwrite=overwrite)
    _mark(out, "init-hub")
    typer.echo(f"wrote {out} ({layout} layout, {size})")


@app.command("merge-lora")
def model_merge_lora(
    run: Path = typer.Argument(..., help="Run folder trained with lora_rank > 0 (or its lora/ folder)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the merged diffusers pipeline to."),
    base_model: str = typer.Option(None, help="Base model to merge into (default: the one the run trained from)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Merge LoRA adapters and the trained conv_in into a full InstructPix2Pix pipeline."""
    from instructsd.models.lora import merge_run

    _check_replaceable(out, overwrite)
    merge_run(run, out, base_model=base_model, overwrite=overwrite)
    _mark(out, "merge-lora")
    typer.echo(f"wrote {out}")


@app.command("pretrain-tiny")
def model_pretrain_tiny(
    out: Path = typer.Argument(..., help="Run folder: stages resume from OUT/work; the finished base goes to OUT/model."),
    overrides: List[str] = typer.Argument(None, help="Recipe changes as key=value (keys: `OUT/work/pretrain.yaml`, docs/tiny-base.md)."),
    steps: Optional[int] = typer.Option(None, help="UNet training steps (same as train_steps=N)."),
    seed: Optional[int] = typer.Option(None, help="The one seed: data, weights, noise, evaluation (same as seed=N)."),
) -> None:
    """Pre-train the tiny instruction-following base (half an hour on 2 CPU cores; uses CUDA when present).

    Interrupt it at any time and run the same command again: it resumes.
    """
    import json
    import sys

    from instructsd.config import load_config
    from instructsd.recipes.pretrain_tiny import PretrainConfig, format_metrics, pretrain_tiny

    extra = [f"{k}={v}" for k, v in {"train_steps": steps, "seed": seed}.items() if v is not None]
    cfg = load_config(PretrainConfig, None, list(overrides or []) + extra)
    model = pretrain_tiny(out, cfg, command="instructsd " + " ".join(sys.argv[1:]))
    record = json.loads((model / "pretrain.json").read_text())
    typer.echo(format_metrics(record["metrics"]))
    typer.echo(f"wrote {model} (model card: {model / 'README.md'})")
