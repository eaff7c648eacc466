"""The ``instructsd`` command line: thin subcommands over the library, one per stage."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from instructsd.errors import InstructSDError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Instruction-tune Stable Diffusion to follow image edits.")
data_app = typer.Typer(no_args_is_help=True, help="Build instruction datasets.")
model_app = typer.Typer(no_args_is_help=True, help="Make and inspect models.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs and presets.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")


def _split(csv: str) -> list[str]:
    return [part.strip() for part in csv.split(",") if part.strip()]


# --- data ------------------------------------------------------------------------------------
@data_app.command("build")
def data_build(
    out: Path = typer.Argument(..., help="Folder to write the dataset to (Hugging Face datasets format)."),
    images: Optional[Path] = typer.Option(None, help="Folder of source photos (recursive). Default: the sample photos shipped with scikit-image."),
    tasks: str = typer.Option("denoise,lowlight,cartoonize", help="Comma-separated tasks; see `instructsd data tasks`."),
    size: int = typer.Option(64, help="Side of the square pairs, in pixels."),
    crops_per_image: int = typer.Option(4, help="Random crops taken from each source photo."),
    val_fraction: float = typer.Option(0.15, help="Fraction of source photos held out for validation."),
    seed: int = typer.Option(0, help="Seed for crops, degradations and instruction choice."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists (only after the new dataset is complete)."),
) -> None:
    """Make (input, instruction, edited) pairs from photos and save train/validation splits."""
    from instructsd.data.build import build_dataset
    from instructsd.data.images import find_images, load_image
    from instructsd.data.samples import sample_images

    sources = [(str(p.relative_to(images).with_suffix("")), load_image(p)) for p in find_images(images)] if images else sample_images()
    data = build_dataset(sources, out, tasks=tuple(_split(tasks)), size=size, crops_per_image=crops_per_image,
                         val_fraction=val_fraction, seed=seed, overwrite=overwrite)
    counts = ", ".join(f"{name}: {len(split)}" for name, split in data.items())
    typer.echo(f"wrote {out} ({counts})")


@data_app.command("tasks")
def data_tasks() -> None:
    """List the built-in edit tasks and their instructions."""
    from instructsd.data.tasks import TASKS

    for task in TASKS.values():
        typer.echo(f"{task.name}:")
        for text in task.instructions:
            typer.echo(f"  - {text}")


# --- model -----------------------------------------------------------------------------------
@model_app.command("init-tiny")
def model_init_tiny(
    out: Path = typer.Argument(..., help="Folder to write the diffusers model to."),
    in_channels: int = typer.Option(8, help="8: InstructPix2Pix layout; 4: plain Stable Diffusion layout."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Write a tiny random-weight model (UNet, VAE, CLIP text encoder, BPE tokenizer, scheduler)."""
    from instructsd.models.tiny import init_tiny

    init_tiny(out, in_channels=in_channels, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {out} ({in_channels}-channel UNet)")


# --- config ----------------------------------------------------------------------------------
@config_app.command("show")
def config_show(
    config: Optional[str] = typer.Argument(None, help="Preset name or YAML file; omit for the defaults."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides."),
) -> None:
    """Print the resolved training config, one documented key per line."""
    import tempfile

    from instructsd.config import load_config, save_config
    from instructsd.train.config import TrainConfig

    cfg = load_config(TrainConfig, config, overrides or [])
    with tempfile.TemporaryDirectory() as tmp:
        typer.echo(save_config(cfg, Path(tmp) / "config.yaml").read_text())


@config_app.command("presets")
def config_presets() -> None:
    """List the named presets."""
    from instructsd.config import presets

    for name, path in sorted(presets().items()):
        typer.echo(f"{name}\t{path}")


# --- train -----------------------------------------------------------------------------------
@app.command("train")
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


# --- edit ------------------------------------------------------------------------------------
@app.command("edit")
def edit_cmd(
    model: str = typer.Option(..., help="InstructPix2Pix model: hub id or local diffusers folder."),
    image: Path = typer.Option(..., help="Image to edit."),
    instruction: str = typer.Option(..., help='What to do, e.g. "Cartoonize the image."'),
    out: Path = typer.Option(..., help="Where to write the edited PNG."),
    steps: int = typer.Option(20, help="Sampling steps."),
    image_guidance: float = typer.Option(1.5, help="Image guidance scale (higher stays closer to the input)."),
    guidance: float = typer.Option(7.0, help="Text guidance scale (higher follows the instruction harder)."),
    scheduler: str = typer.Option("euler_ancestral", help="euler_ancestral, euler, dpmpp, ddim or unipc."),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same edit."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu (default: the best available)."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
) -> None:
    """Edit one image by one instruction."""
    from instructsd.data.images import load_image
    from instructsd.edit.editor import EditSettings, edit_images, load_editor
    from instructsd.edit.io import save_png

    settings = EditSettings(num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance, scheduler=scheduler)
    source = load_image(image)
    pipe = load_editor(model, device=device, dtype=dtype)
    (result,) = edit_images(pipe, [source], [instruction], settings, seeds=[seed])
    meta = {"model": model, "image": str(image), "instruction": instruction, "seed": seed, **settings.__dict__}
    save_png(result, out, meta)
    typer.echo(f"wrote {out}")


# --- eval ------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., help="InstructPix2Pix model: hub id or local diffusers folder."),
    dataset: Path = typer.Option(..., help="Dataset folder from `instructsd data build`."),
    split: str = typer.Option("validation", help="Split to score."),
    out: Path = typer.Option(Path("runs/eval"), help="Folder for metrics.json, metrics.csv and report.html."),
    per_task: Optional[int] = typer.Option(None, help="Score at most N rows per task."),
    steps: int = typer.Option(20, help="Sampling steps."),
    image_guidance: float = typer.Option(1.5, help="Image guidance scale."),
    guidance: float = typer.Option(7.0, help="Text guidance scale."),
    seed: int = typer.Option(0, help="Base seed (row i uses seed + i)."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu."),
) -> None:
    """PSNR and SSIM of a model's edits against ground truth, beside the identity baseline."""
    from instructsd.edit.editor import EditSettings, load_editor
    from instructsd.eval.run import run_eval
    from instructsd.train.data import load_split

    rows = load_split(dataset, split, ["input_image", "edited_image", "edit_prompt"])
    pipe = load_editor(model, device=device)
    settings = EditSettings(num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance)
    summary, report = run_eval(pipe, rows, out, settings=settings, per_task=per_task, seed=seed, title=f"Evaluation of {model}")
    from instructsd.eval.run import format_table

    typer.echo(format_table(summary))
    typer.echo(f"report: {report}")


# --- quickstart ------------------------------------------------------------------------------
@app.command("quickstart")
def quickstart_cmd(
    out: Path = typer.Option(Path("runs/quickstart"), help="Run folder (replaced if it exists)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the tiny-cpu preset's)."),
    vae_steps: Optional[int] = typer.Option(None, help="Autoencoder fitting steps (default: the quickstart's)."),
) -> None:
    """The whole system on CPU in minutes: data → tiny model → train → edit → eval → report."""
    from instructsd.quickstart import run_quickstart

    report = run_quickstart(out, train_steps=steps, vae_steps=vae_steps)
    typer.echo(f"report: {report.resolve()}")


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
