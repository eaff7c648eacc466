"""Gradio web demo: upload an image, type an instruction, get edits to view and download.

The app owns no model logic: it validates the upload with the same loader as the CLI
(:func:`instructsd.edit.inputs.read_image`), calls :func:`edit_images`, and saves each result
with :func:`save_png`, so a downloaded PNG says how it was made. Gradio is an optional extra
(``pip install 'instructsd[demo]'``) imported only here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from instructsd.edit.editor import SCHEDULERS, EditSettings, edit_images
from instructsd.edit.inputs import read_image
from instructsd.edit.io import save_png
from instructsd.errors import InstructSDError

EXAMPLE_PHOTOS = {"coffee": "Cartoonize the image.", "astronaut": "Enhance the low-light image."}


@dataclass(frozen=True)
class DemoLimits:
    """What one visitor may ask of the server."""

    max_upload_mb: float = 10.0
    """Largest upload accepted, in megabytes (enforced by Gradio before the file is stored)."""
    max_pixels: int = 16_000_000
    """Largest image accepted, in pixels (read from the header before decoding)."""
    max_side: int = 1024
    """Images are edited with their longer side at most this (aspect kept)."""
    max_outputs: int = 4
    """Most edits (seeds) per request."""
    max_steps: int = 50
    concurrency: int = 1
    """Edits running at once; the rest wait in the queue."""
    queue_size: int = 16
    """Requests waiting beyond which new ones are turned away."""


def _import_gradio():
    try:
        import gradio as gr
    except ImportError as err:
        raise InstructSDError("the web demo needs Gradio: pip install 'instructsd[demo]'") from err
    return gr


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder and point Gradio's upload/cache folder inside it (before import)."""
    run_dir = Path(run_dir).resolve()
    (run_dir / "gradio_tmp").mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(run_dir / "gradio_tmp")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return run_dir


def _examples(run_dir: Path) -> list[list[str]]:
    """A couple of bundled photos (from scikit-image) as clickable examples; none if missing."""
    try:
        from instructsd.data.samples import sample_images
        photos = dict(sample_images())
    except InstructSDError:
        return []
    rows = []
    for name, instruction in EXAMPLE_PHOTOS.items():
        if name in photos:
            path = run_dir / "examples" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                photos[name].resize((256, 256 * photos[name].height // photos[name].width)).save(path)
            rows.append([str(path), instruction])
    return rows


def _number(value, label: str) -> float:
    """A finite number from a form field, or a message naming the field (NaN included)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InstructSDError(f"{label} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InstructSDError(f"{label} must be a finite number, got {value!r}")
    return number


def make_edit_fn(pipe, model_name: str, run_dir: Path, limits: DemoLimits):
    """The request handler: (upload path, instruction, params) → (gallery items, download paths)."""
    gr = _import_gradio()
    out_dir = run_dir / "outputs"

    def edit(image_path, instruction, steps, image_guidance, guidance, scheduler, seed, num_outputs, highres):
        if not image_path:
            raise gr.Error("Upload an image first.")
        if not instruction or not instruction.strip():
            raise gr.Error("Type an instruction, e.g. “Cartoonize the image.”")
        try:
            # Requests can come from the HTTP API as well as the sliders: anything may arrive.
            num_outputs = max(1, min(int(_number(num_outputs, "Number of edits")), limits.max_outputs))
            steps = max(1, min(int(_number(steps, "Steps")), limits.max_steps))
            first_seed = int(_number(seed, "Seed"))
            image = read_image(image_path, max_pixels=limits.max_pixels)
            # Guidance is passed on as given: edit_images applies eq. 3 at any finite scale >= 0
            # and EditSettings refuses the rest, naming the guidance (issue 11, item 7).
            settings = EditSettings(
                num_inference_steps=steps, image_guidance_scale=_number(image_guidance, "Image guidance"),
                guidance_scale=_number(guidance, "Text guidance"),
                scheduler=scheduler, max_side=limits.max_side, highres="residual" if highres else "off",
            )
        except InstructSDError as err:  # a clear message in the page, never a crash
            raise gr.Error(str(err).replace(str(Path(image_path).parent) + os.sep, "")) from err
        seeds = [first_seed + k for k in range(num_outputs)]
        results = edit_images(pipe, [image] * num_outputs, [instruction.strip()] * num_outputs, settings, seeds=seeds)
        # One name per request: two requests in the same second (same seed) must not overwrite
        # each other's downloads.
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        paths = []
        for s, result in zip(seeds, results):
            meta = {"model": model_name, "instruction": instruction.strip(), "seed": s, **dataclasses.asdict(settings)}
            paths.append(str(save_png(result, out_dir / f"{stamp}-{s}.png", meta)))
        return [(p, f"seed {s}") for p, s in zip(paths, seeds)], paths

    return edit


def build_demo(pipe, model_name: str, run_dir: str | Path, limits: DemoLimits = DemoLimits()):
    """The Gradio Blocks app (not launched); the queue bounds concurrent edits."""
    run_dir = prepare_run_dir(run_dir)
    gr = _import_gradio()
    edit = make_edit_fn(pipe, model_name, run_dir, limits)
    defaults = EditSettings()
    with gr.Blocks(title="instructsd — edit images by instruction") as demo:
        gr.Markdown(
            f"## Edit an image by an instruction\nModel: `{model_name}`. Uploads up to "
            f"{limits.max_upload_mb:g} MB and {limits.max_pixels / 1e6:g} MP; edited at ≤ {limits.max_side} px."
        )
        with gr.Row():
            with gr.Column():
                # image_mode=None: Gradio hands over the uploaded file undecoded, so our loader
                # (pixel limit first, then EXIF, CMYK, 16-bit, ...) is the only thing that decodes it.
                image = gr.Image(type="filepath", image_mode=None, label="Input image", sources=["upload", "clipboard"])
                instruction = gr.Textbox(label="Instruction", placeholder="Cartoonize the image.")
                with gr.Accordion("Parameters", open=False):
                    steps = gr.Slider(1, limits.max_steps, value=min(defaults.num_inference_steps, limits.max_steps), step=1,
                                      label="Steps")
                    # Every value on these sliders is applied (eq. 3 at any scale >= 0, instructsd.edit.guidance),
                    # below 1 too, where the stock pipeline would ignore both.
                    image_guidance = gr.Slider(0.0, 5.0, value=defaults.image_guidance_scale, step=0.1,
                                               label="Image guidance (higher stays closer to the input)")
                    guidance = gr.Slider(0.0, 20.0, value=defaults.guidance_scale, step=0.5,
                                         label="Text guidance (higher follows the instruction harder)")
                    scheduler = gr.Dropdown(["auto", *SCHEDULERS], value=defaults.scheduler, label="Scheduler")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    num_outputs = gr.Slider(1, limits.max_outputs, value=1, step=1, label="Number of edits")
                    highres = gr.Checkbox(value=True, label="High-resolution mode (edit at native size, restore detail)")
                button = gr.Button("Edit", variant="primary", elem_id="edit-button")
            with gr.Column():
                gallery = gr.Gallery(label="Edits", elem_id="gallery", columns=2)
                files = gr.File(label="Download (PNG with settings embedded)", file_count="multiple")
        examples = _examples(run_dir)
        if examples:
            gr.Examples(examples, inputs=[image, instruction])
        inputs = [image, instruction, steps, image_guidance, guidance, scheduler, seed, num_outputs, highres]
        button.click(edit, inputs=inputs, outputs=[gallery, files], concurrency_limit=limits.concurrency)
        instruction.submit(edit, inputs=inputs, outputs=[gallery, files], concurrency_limit=limits.concurrency)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    return demo


def launch(demo, run_dir: str | Path, limits: DemoLimits = DemoLimits(), host: str = "127.0.0.1",
           port: int | None = None, block: bool = True):
    """Serve ``demo`` on ``host`` (loopback unless asked); uploads over the byte limit are refused."""
    run_dir = Path(run_dir).resolve()
    return demo.launch(
        server_name=host, server_port=port, max_file_size=int(limits.max_upload_mb * 1024 * 1024),
        prevent_thread_lock=not block, share=False, quiet=not block,
        allowed_paths=[str(run_dir / "outputs"), str(run_dir / "examples")],
    )
