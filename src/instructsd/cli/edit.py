"""`instructsd edit`: edit an image by an instruction."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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
