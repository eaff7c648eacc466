"""`instructsd data …`: build instruction datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instructsd.cli.common import split_csv
from instructsd.data.images import DEFAULT_MAX_PIXELS

app = typer.Typer(no_args_is_help=True, help="Build instruction datasets.")


@app.command("build")
def data_build(
    out: Path = typer.Argument(..., help="Folder to write the dataset to (Hugging Face datasets format); with --shard, this shard's parts folder."),
    mixture: Optional[Path] = typer.Option(None, help="Mixture YAML (tasks, sources, counts, instruction policy); see docs/data.md. Replaces --images/--tasks/--crops-per-image."),
    images: Optional[Path] = typer.Option(None, help="Folder of source photos (recursive). Default: the sample photos shipped with scikit-image."),
    tasks: str = typer.Option("denoise,lowlight,cartoonize", help="Comma-separated tasks; see `instructsd data tasks`."),
    size: int = typer.Option(64, help="Side of the square pairs, in pixels (a mixture sets its own)."),
    crops_per_image: int = typer.Option(4, help="Random crops taken from each source photo."),
    val_fraction: float = typer.Option(0.15, help="Fraction of source photos held out for validation."),
    seed: int = typer.Option(0, help="Seed for crops, degradations and instruction choice."),
    min_size: Optional[int] = typer.Option(None, help="Skip photos whose short side is smaller (default: --size; a mixture sets its own)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Skip photos whose header declares more pixels, before decoding (a mixture sets its own)."),
    num_proc: int = typer.Option(1, help="Worker processes; the result does not depend on it."),
    shard: str = typer.Option("0/1", help="I/N: build only chunks c with c mod N == I into OUT (a parts folder); combine with `instructsd data join`."),
    holdout: Optional[str] = typer.Option(None, help="Comma-separated photo names (groups) held out for validation, instead of --val-fraction's draw."),
    inverse: float = typer.Option(0.0, help="Share of rows of invertible photo operations made as inverse pairs (edited photo, opposite instruction, original)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists (only after the new dataset is complete)."),
    engine: str = typer.Option("local", help="local, or ray: the chunks as Ray tasks, the same dataset (docs/scale.md); --num-proc is then a local Ray instance's CPUs."),
    address: Optional[str] = typer.Option(None, help="With --engine ray: the Ray cluster (auto, ray://HEAD:10001); default a local instance."),
) -> None:
    """Make (input, instruction, edited) pairs and save train/validation splits.

    One builder: --images/--tasks is a mixture of built-in tasks on one photo folder (the older
    builder's seeds and split by photo). Unreadable, too small or too large photos are skipped
    and listed in skipped.jsonl. A build is resumable: kill it and run the same command again.
    """
    from instructsd.data.build import build_dataset
    from instructsd.data.write import build_mixture, parse_shard
    from instructsd.errors import InstructSDError

    part = parse_shard(shard)
    if mixture is not None:
        if images is not None:
            raise InstructSDError("--images and --mixture do not mix; put the folder in the mixture as source: {folder: DIR}")
        data = build_mixture(mixture, out, num_proc=num_proc, shard=part, overwrite=overwrite, progress=progress,
                             engine=engine, address=address)
    else:
        from instructsd.data.card import SAMPLES_LICENSE
        from instructsd.data.samples import GROUPS, sample_images

        command = (f"instructsd data build {out}{f' --images {images}' if images else ''} --tasks {tasks} --size {size} "
                   f"--crops-per-image {crops_per_image} --val-fraction {val_fraction} --seed {seed}"
                   + (f" --holdout {holdout}" if holdout else "") + (f" --inverse {inverse:g}" if inverse else ""))
        data = build_dataset(images if images else sample_images(), out, tasks=tuple(split_csv(tasks)), size=size,
                             crops_per_image=crops_per_image, val_fraction=val_fraction, seed=seed, min_size=min_size,
                             max_pixels=max_pixels, num_proc=num_proc, shard=part, overwrite=overwrite,
                             progress=progress, source_licenses=None if images else [SAMPLES_LICENSE], command=command,
                             groups=None if images else GROUPS, holdout=split_csv(holdout) if holdout else (),
                             inverse=inverse, engine=engine, address=address)
    if data is None:
        typer.echo(f"wrote shard {shard} parts to {out}; join all shards with `instructsd data join OUT PARTS...`")
        return
    counts = ", ".join(f"{name}: {len(split)}" for name, split in data.items())
    typer.echo(f"wrote {out} ({counts})")


@app.command("join")
def data_join(
    out: Path = typer.Argument(..., help="Folder to write the joined dataset to."),
    parts: list[Path] = typer.Argument(..., help="Parts folders written by `instructsd data build --shard I/N` (all N shards)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Join the shards of a mixture build into the dataset a single build would make."""
    from instructsd.data.write import join_parts

    data = join_parts(parts, out, overwrite=overwrite, progress=progress)
    counts = ", ".join(f"{name}: {len(split)}" for name, split in data.items())
    typer.echo(f"wrote {out} ({counts})")


@app.command("export-parquet")
def data_export_parquet(
    dataset: Path = typer.Argument(..., help="A saved dataset folder."),
    out: Path = typer.Argument(..., help="Folder for <split>.parquet files."),
) -> None:
    """Write each split as one parquet file (e.g. to upload or share)."""
    from instructsd.data.write import export_parquet

    for path in export_parquet(dataset, out):
        typer.echo(f"wrote {path}")


@app.command("push")
def data_push(
    dataset: Path = typer.Argument(..., help="A saved dataset folder."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. me/my-instructions."),
    public: bool = typer.Option(False, help="Create the repo public (default private)."),
) -> None:
    """Upload a saved dataset to the Hugging Face Hub (needs `hf auth login` and network)."""
    from instructsd.data.write import push_to_hub

    push_to_hub(dataset, repo_id, private=not public)
    typer.echo(f"pushed {dataset} to {repo_id}")


@app.command("degradations")
def data_degradations() -> None:
    """List the synthetic degradations, their task and parameter ranges."""
    from instructsd.data.degradations import DEGRADATIONS, GROUPS

    for d in DEGRADATIONS.values():
        ranges = ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in d.ranges.items())
        typer.echo(f"{d.name} ({d.task}): {ranges}")
    for name, members in GROUPS.items():
        typer.echo(f"{name}: one of {', '.join(members)}, per sample")


@app.command("tasks")
def data_tasks() -> None:
    """List the built-in edit tasks and their instructions."""
    from instructsd.data.tasks import TASKS

    from instructsd.data.photo_ops import OPS

    for task in TASKS.values():
        if task.photo_op is not None:  # hundreds of wordings: `data instructions OP` prints them
            op = OPS.get(task.photo_op)
            amounts = (f", {op.amount} in {', '.join(f'{lv.value:g}' for lv in op.levels)}"
                       + (" (either way)" if op.signed else "")) if op and op.amount else ""
            typer.echo(f"{task.name} (photo operation{amounts}{', colour photos only' if task.needs_colour else ''}"
                       f"{', invertible' if task.invertible else ''}): e.g. {task.canonical}")
            continue
        spec = task.degradation
        ranges = "".join(f", {k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in spec.ranges.items()) if spec else ""
        made = f"teacher {task.teacher}" if task.teacher else f"degradation {spec.name}{ranges or ', default ranges'}"
        typer.echo(f"{task.name} ({made}):")
        for text in task.instructions:
            typer.echo(f"  - {text}")


@app.command("instructions")
def data_instructions(
    task: str = typer.Argument(..., help="Task name (see `instructsd data tasks`), or a compound like deblur+denoise."),
    samples: int = typer.Option(5, help="For a compound task: how many sampled instructions to print."),
    seed: int = typer.Option(0, help="Seed for the sampled compound instructions."),
) -> None:
    """Print a task's instruction bank (train and held-out paraphrases, clauses)."""
    import numpy as np

    from instructsd.data.instructions import COMPOUND_SEP, canonical_instruction, format_bank, sample_instruction
    from instructsd.data.photo_ops import OPS

    if task in OPS:  # templates with amount slots, and a few filled in
        from instructsd.data.photo_instructions import get_op_bank, instruction_for_edit
        from instructsd.data.photo_ops import sample_edit

        bank, rng = get_op_bank(task), np.random.default_rng(seed)
        typer.echo(f"{task}  (canonical template: {bank.canonical})")
        typer.echo(f"train templates ({len(bank.train)}):\n" + "\n".join(f"  - {t}" for t in bank.train))
        typer.echo(f"held_out templates ({len(bank.held_out)}):\n" + "\n".join(f"  - {t}" for t in bank.held_out))
        typer.echo("filled in:")
        for _ in range(samples):
            params = sample_edit(task, rng)
            typer.echo(f"  - {instruction_for_edit(task, params, rng)}   edit_params {params}")
        return
    if COMPOUND_SEP not in task:
        typer.echo(format_bank(task))
        return
    rng = np.random.default_rng(seed)
    typer.echo(f"{task}  (canonical: {canonical_instruction(task)})")
    for held_out in (False, True):
        typer.echo("held_out:" if held_out else "train:")
        for _ in range(samples):
            typer.echo(f"  - {sample_instruction(task, rng, held_out=held_out)}")
