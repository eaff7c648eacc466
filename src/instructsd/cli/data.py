"""`instructsd data …`: build instruction datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instructsd.cli.common import split_csv

app = typer.Typer(no_args_is_help=True, help="Build instruction datasets.")


@app.command("build")


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
    data = build_dataset(sources, out, tasks=tuple(split_csv(tasks)), size=size, crops_per_image=crops_per_image,
                         val_fraction=val_fraction, seed=seed, overwrite=overwrite)
    counts = ", ".join(f"{name}: {len(split)}" for name, split in data.items())
    typer.echo(f"wrote {out} ({counts})")


@app.command("tasks")


def data_tasks() -> None:
    """List the built-in edit tasks and their instructions."""
    from instructsd.data.tasks import TASKS

    for task in TASKS.values():
        typer.echo(f"{task.name}:")
        for text in task.instructions:
            typer.echo(f"  - {text}")
