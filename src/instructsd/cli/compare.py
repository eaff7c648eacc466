"""`instructsd compare`: several models, the identity and ground-truth baselines, one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from instructsd.cli.common import (
    DATASET_HELP,
    EDITED_COLUMN,
    GROUP_COLUMN,
    INPUT_COLUMN,
    PROMPT_COLUMN,
    TASK_COLUMN,
    split_csv,
)
from instructsd.edit.guidance import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, DEFAULT_STEPS

# `--models A B C`: click options take one value each, so the values after the first arrive
# as extra arguments; the command reads them from the context (see compare_cmd).
CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": False}


def compare_cmd(
    ctx: typer.Context,
    models: list[str] = typer.Option(..., help="Models to compare: hub ids or local folders, optionally label=path. "
                                               "Give several after one --models."),
    dataset: str = typer.Option(..., help=DATASET_HELP),
    split: str = typer.Option("validation", help="Split to compare on."),
    teacher: Optional[str] = typer.Option(None, help="A reference model scored like the others, labelled 'teacher' "
                                                     "(the dataset's ground truth is always shown and scored)."),
    out: Path = typer.Option(Path("runs/compare"), help="Run folder: images/, metrics.csv, metrics.json, report.html."),
    per_task: Optional[int] = typer.Option(None, help="Compare at most N rows per task (spread over the split)."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Sampling steps."),
    image_guidance: float = typer.Option(DEFAULT_IMAGE_GUIDANCE, help="Image guidance scale (any value >= 0)."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Text guidance scale (any value >= 0)."),
    seed: int = typer.Option(0, help="Base seed (row i uses seed + i for every model)."),
    sweep: str = typer.Option("1.0,1.5,2.0", help="Image-guidance scales for the CLIP trade-off curve ('' to skip)."),
    instructions: str = typer.Option("", help="Extra instruction sets for the generalisation table: seen,held_out,canonical."),
    clip: str = typer.Option("openai/clip-vit-large-patch14", help="CLIP model (hub id or folder) or 'none'."),
    dino: str = typer.Option("facebook/dino-vits16", help="DINO ViT model (hub id or folder) or 'none'."),
    lpips: str = typer.Option("alex", help="LPIPS backbone (needs the lpips package) or 'none'."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu."),
    input_column: str = INPUT_COLUMN,
    edited_column: str = EDITED_COLUMN,
    prompt_column: str = PROMPT_COLUMN,
    task_column: str = TASK_COLUMN,
    group_column: str = GROUP_COLUMN,
    batch_size: int = typer.Option(8, help="Images per pipeline call (results do not depend on it)."),
    following: int = typer.Option(24, help="Held-out inputs for the instruction-following confusion matrix (run when the "
                                           "split has two or more photo-operation tasks; 0 skips it)."),
) -> None:
    """Edit the same images with every model and score them all beside identity and ground truth."""
    from instructsd.data.load import Columns
    from instructsd.edit.editor import EditSettings, default_device
    from instructsd.errors import InstructSDError
    from instructsd.eval.compare import check_sweep, format_table, model_labels, run_compare
    from instructsd.eval.suite import MetricSuite

    extra = [a for a in ctx.args]
    flags = [a for a in extra if a.startswith("-")]
    if flags:
        raise InstructSDError(f"unknown option {flags[0]}; see `instructsd compare --help`")
    try:
        scales = [float(s) for s in split_csv(sweep)]
    except ValueError:
        raise InstructSDError(f"--sweep takes comma-separated numbers, got '{sweep}'") from None
    # Every setting is checked before any model loads (the sweep by the same rule, issue 11 item 7).
    settings = EditSettings(num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance)
    check_sweep(scales, settings)
    labelled = model_labels([*models, *extra])
    dev = device or default_device()
    suite = MetricSuite.load(clip, dino, lpips, device=dev)
    result = run_compare(labelled, dataset, out, split=split, teacher=teacher, settings=settings, per_task=per_task,
                         seed=seed, suite=suite, sweep=scales, instruction_sets=split_csv(instructions), device=dev,
                         batch_size=batch_size, title=f"Comparison on {dataset} ({split})", following=following,
                         columns=Columns(input_column, edited_column, prompt_column, task_column, group_column))
    for note in result.notes:
        typer.echo(f"note: {note}")
    for follow in json.loads((result.out / "metrics.json").read_text()).get("following", []):
        typer.echo(f"instruction following, {follow['label']}: {follow['accuracy']:.0%} "
                   f"[{follow['accuracy_lo']:.0%}, {follow['accuracy_hi']:.0%}] of {follow['n']} edits")
    typer.echo(format_table(result.summary, ("psnr", "ssim", "identity_rate", "preservation", "clip_dir", "clip_i", "dino")))
    typer.echo(f"report: {result.report}")
