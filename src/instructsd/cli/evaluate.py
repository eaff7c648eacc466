"""`instructsd eval`: score a model against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instructsd.cli.common import DATASET_HELP, EDITED_COLUMN, GROUP_COLUMN, INPUT_COLUMN, PROMPT_COLUMN, TASK_COLUMN
from instructsd.edit.guidance import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, DEFAULT_STEPS


def eval_cmd(
    model: str = typer.Option(..., help="InstructPix2Pix model: hub id or local diffusers folder."),
    dataset: str = typer.Option(..., help=DATASET_HELP),
    split: str = typer.Option("validation", help="Split to score."),
    out: Path = typer.Option(Path("runs/eval"), help="Folder for metrics.json, metrics.csv and report.html."),
    per_task: Optional[int] = typer.Option(None, help="Score at most N rows per task."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Sampling steps."),
    image_guidance: float = typer.Option(DEFAULT_IMAGE_GUIDANCE, help="Image guidance scale (any value >= 0)."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Text guidance scale (any value >= 0)."),
    seed: int = typer.Option(0, help="Base seed (row i uses seed + i)."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu."),
    input_column: str = INPUT_COLUMN,
    edited_column: str = EDITED_COLUMN,
    prompt_column: str = PROMPT_COLUMN,
    task_column: str = TASK_COLUMN,
    group_column: str = GROUP_COLUMN,
    clip: str = typer.Option("none", help="CLIP model (hub id or folder) for CLIP image/direction/T/I metrics, or none."),
    dino: str = typer.Option("none", help="DINO ViT model (hub id or folder) for the DINO score, or none."),
    lpips: str = typer.Option("none", help="LPIPS backbone (alex or vgg; needs the lpips package), or none."),
) -> None:
    """PSNR and SSIM (and, on request, every other metric) of a model's edits, beside the identity baseline."""
    from instructsd.edit.editor import EditSettings, default_device, load_pipeline
    from instructsd.eval.features import MetricSuite, disabled
    from instructsd.eval.run import format_table, run_eval
    from instructsd.data.load import Columns, load_split

    settings = EditSettings(num_inference_steps=steps, image_guidance_scale=image_guidance, guidance_scale=guidance)
    columns = Columns(input_column, edited_column, prompt_column, task_column, group_column)
    rows = load_split(dataset, split, columns)
    device = device or default_device()
    pipe = load_pipeline(model, device=device)
    # Without any network metric asked for, the classic PSNR / SSIM evaluation; otherwise the whole suite.
    wanted = not all(disabled(x) for x in (clip, dino, lpips))
    suite = MetricSuite.load(clip, dino, lpips, device=device) if wanted else None
    summary, report = run_eval(pipe, rows, out, settings=settings, per_task=per_task, seed=seed,
                               title=f"Evaluation of {model}", suite=suite, columns=columns)
    for note in suite.notes if suite is not None else []:
        typer.echo(f"note: {note}")
    typer.echo(format_table(summary))
    typer.echo(f"report: {report}")
