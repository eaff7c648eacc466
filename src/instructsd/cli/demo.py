"""`instructsd demo`: the web demo (Gradio) over the same edit function as the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def demo_cmd(
    model: str = typer.Option(..., help="InstructPix2Pix model: hub id or local diffusers folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the demo to your network."),
    port: Optional[int] = typer.Option(None, help="Port (default: the first free one from 7860)."),
    out: Path = typer.Option(Path("runs/demo"), help="Run folder: a record of the edited PNGs (never served) and examples; uploads go to a private temporary folder."),
    concurrency: int = typer.Option(1, help="Edits running at once; others wait in the queue."),
    queue_size: int = typer.Option(16, help="Waiting requests beyond which new ones are refused."),
    max_upload_mb: float = typer.Option(10.0, help="Largest upload, in MB."),
    max_pixels: int = typer.Option(16_000_000, help="Largest upload, in pixels."),
    max_side: int = typer.Option(1024, help="Edit at most at this longer side."),
    max_stored_files: int = typer.Option(200, help="Visitor files (uploads, edits) kept at most; the oldest go first."),
    max_stored_mb: float = typer.Option(500.0, help="Megabytes of visitor files kept at most."),
    max_stored_hours: float = typer.Option(1.0, help="Visitor files older than this are deleted."),
    device: Optional[str] = typer.Option(None, help="cuda, mps or cpu (default: the best available)."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
) -> None:
    """Serve a web page to upload an image, type an instruction and download the edits."""
    from instructsd.app.demo import DemoLimits, build_demo, exposure_warning, launch, prepare_run_dir
    from instructsd.edit.editor import load_pipeline

    warning = exposure_warning(host)
    if warning:
        typer.echo(warning, err=True)
    limits = DemoLimits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_side=max_side,
                        concurrency=concurrency, queue_size=queue_size, max_stored_files=max_stored_files,
                        max_stored_mb=max_stored_mb, max_stored_age_s=max_stored_hours * 3600)
    run_dir = prepare_run_dir(out)
    pipe = load_pipeline(model, device=device, dtype=dtype)
    demo = build_demo(pipe, model, run_dir, limits)
    typer.echo(f"serving on http://{host}:{port or 7860} (run folder {run_dir}); Ctrl+C to stop")
    launch(demo, run_dir, limits, host=host, port=port, block=True)
