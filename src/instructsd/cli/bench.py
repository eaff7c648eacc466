"""`instructsd bench magicbrush|emu-edit`: a model on a local copy of a published benchmark (docs/bench.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instructsd.edit.guidance import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, DEFAULT_STEPS

app = typer.Typer(no_args_is_help=True, help="Run a model on MagicBrush or the Emu Edit test set, offline, with pinned metrics.")

# The options both benchmarks share, as typer defaults (one definition, two commands).
MODEL = typer.Option(..., help="InstructPix2Pix model: local diffusers folder (or a cached hub id).")
DATASET = typer.Option(..., help="Local copy: a folder of the benchmark's parquet shards as published, one .parquet "
                                 "file, or a save_to_disk folder.")
OUT = typer.Option(..., help="Run folder (new, empty, or an earlier bench run: its saved outputs are resumed).")
SPLIT = typer.Option("auto", help="Split to run; auto: the first of test, dev, validation, train that the copy has.")
SEED = typer.Option(0, help="Base seed: row i of the split is edited with seed + i.")
RESOLUTION = typer.Option(512, help="Longer side the model edits at (inputs are scaled down to it, never up).")
STEPS = typer.Option(DEFAULT_STEPS, help="Sampling steps.")
IMAGE_GUIDANCE = typer.Option(DEFAULT_IMAGE_GUIDANCE, help="Image guidance scale (any value >= 0).")
GUIDANCE = typer.Option(DEFAULT_GUIDANCE, help="Text guidance scale (any value >= 0).")
SCHEDULER = typer.Option("auto", help="auto (the model's own sampler), euler_ancestral, euler, dpmpp, ddim or unipc.")
NEGATIVE = typer.Option(None, help="What the edits should avoid.")
BATCH = typer.Option(1, help="Rows edited together (each keeps its own seed).")
CLIP = typer.Option(None, help="CLIP checkpoint folder (or cached hub id) for the CLIP metrics; none skips them. "
                               "Default: the benchmark's (docs/bench.md).")
DINO = typer.Option(None, help="DINO ViT checkpoint folder (or cached hub id) for the DINO metric; none skips it. "
                               "Default: facebook/dino-vits16.")
DEVICE = typer.Option(None, help="cuda, mps or cpu (default: the best available).")
DTYPE = typer.Option("fp32", help="fp32, fp16 or bf16.")
OVERWRITE = typer.Option(False, help="Replace the outputs of an earlier bench run in --out made with other settings.")


def _run(benchmark: str, **kw) -> None:
    from tqdm import tqdm

    from instructsd.edit.editor import EditSettings
    from instructsd.eval.bench import BenchOptions, format_summary, run_bench

    settings = EditSettings(num_inference_steps=kw.pop("steps"), image_guidance_scale=kw.pop("image_guidance"),
                            guidance_scale=kw.pop("guidance"), scheduler=kw.pop("scheduler"),
                            negative_prompt=kw.pop("negative_prompt"), max_side=kw.pop("resolution"))
    options = BenchOptions(settings=settings, **kw)
    bar = None

    def progress(n: int, total: int) -> None:  # the bar starts once the rows are planned
        nonlocal bar
        bar = bar or tqdm(desc=benchmark, unit="edit", total=total)
        bar.update(n)

    try:
        result = run_bench(benchmark, options, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(format_summary(result.metrics))
    typer.echo(f"edited {result.edited} of {len(result.rows)} rows (the rest resumed); wrote {options.out / 'metrics.json'}")


@app.command("magicbrush")
def magicbrush_cmd(
    model: str = MODEL, dataset: str = DATASET, out: Path = OUT, split: str = SPLIT,
    limit: Optional[int] = typer.Option(None, help="Run only the first N sessions (img_ids), every turn of each."),
    turns: str = typer.Option("multi", help="multi: turn k edits the model's own output of turn k-1 (MagicBrush's "
                                            "multi-turn setting); single: every turn edits its source_img."),
    caption_column: str = typer.Option("auto", help="Column with each target's local caption, for CLIP-T; auto: "
                                                    "output_caption/local_description/caption if present; none: skip CLIP-T."),
    seed: int = SEED, resolution: int = RESOLUTION, steps: int = STEPS, image_guidance: float = IMAGE_GUIDANCE,
    guidance: float = GUIDANCE, scheduler: str = SCHEDULER, negative_prompt: Optional[str] = NEGATIVE,
    batch_size: int = BATCH, clip: Optional[str] = CLIP, dino: Optional[str] = DINO, device: Optional[str] = DEVICE,
    dtype: str = DTYPE, overwrite: bool = OVERWRITE,
) -> None:
    """MagicBrush (Zhang et al. 2023): L1, L2, CLIP-I, DINO, CLIP-T against each turn's target."""
    _run("magicbrush", **locals())


@app.command("emu-edit")
def emu_edit_cmd(
    model: str = MODEL, dataset: str = DATASET, out: Path = OUT, split: str = SPLIT,
    limit: Optional[int] = typer.Option(None, help="Run only the first N rows."),
    seed: int = SEED, resolution: int = RESOLUTION, steps: int = STEPS, image_guidance: float = IMAGE_GUIDANCE,
    guidance: float = GUIDANCE, scheduler: str = SCHEDULER, negative_prompt: Optional[str] = NEGATIVE,
    batch_size: int = BATCH, clip: Optional[str] = CLIP, dino: Optional[str] = DINO, device: Optional[str] = DEVICE,
    dtype: str = DTYPE, overwrite: bool = OVERWRITE,
) -> None:
    """Emu Edit test set (Sheynin et al. 2023): CLIP-dir, CLIP-img, CLIP-out, L1 and DINO against the input."""
    _run("emu-edit", **locals())
