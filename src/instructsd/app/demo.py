"""Gradio web demo: upload an image, type an instruction, get edits to view and download.

The app owns no model logic: it validates the upload with the same loader as the CLI
(:func:`instructsd.edit.inputs.read_image`), calls :func:`edit_images`, and saves each result
with :func:`save_png`, so a downloaded PNG says how it was made. Gradio is an optional extra
(``pip install 'instructsd[demo]'``) imported only here.

Private and honest (issue 17, items 5-6):

- The upload arrives as an undecoded file (``gr.File``), so every bad upload — empty, not an
  image, too many pixels, truncated — gets this handler's message, not Gradio's generic one.
- Visitors' files live in a private temporary folder (Gradio's upload folder), not in the run
  folder, so file URLs name no path of the server's project; the run folder's ``outputs/`` is a
  server-side record that is never served. Each request's files get random names, so requests
  at the same moment never collide and no visitor can guess another's edit.
- Uploads, served copies and recorded outputs are kept within a budget (count, bytes, age).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import shutil
import tempfile
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
    max_stored_files: int = 200
    """Most visitor files (uploads, served copies, recorded outputs) kept; the oldest go first."""
    max_stored_mb: float = 500.0
    """Most megabytes of visitor files kept."""
    max_stored_age_s: float = 3600.0
    """Visitor files older than this (seconds) are deleted."""


UPLOADS_PREFIX = "instructsd-demo-"
log = logging.getLogger(__name__)


def _import_gradio():
    try:
        import gradio as gr
    except ImportError as err:
        raise InstructSDError("the web demo needs Gradio: pip install 'instructsd[demo]'") from err
    return gr


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create the run folder, and a private temporary folder for Gradio's uploads and served
    files (set before Gradio is imported); file URLs then name only that folder."""
    run_dir = Path(run_dir).resolve()
    (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
    current = os.environ.get("GRADIO_TEMP_DIR", "")
    if not (Path(current).name.startswith(UPLOADS_PREFIX) and Path(current).is_dir()):
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=UPLOADS_PREFIX)  # mode 0700
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return run_dir


def upload_dir() -> Path:
    """The private folder Gradio keeps uploads and served files in (see :func:`prepare_run_dir`)."""
    return Path(os.environ["GRADIO_TEMP_DIR"])


def exposure_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address: the demo then serves the network."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (f"warning: --host {host} exposes the demo to every machine that can reach this one: anyone who opens "
            "the page can upload images and run edits here, with no login. Use it on a trusted network only.")


def prune_stored(folders: list[Path], limits: DemoLimits, keep: frozenset[Path] = frozenset()) -> int:
    """Delete visitor files beyond the budget: older than ``max_stored_age_s``, then the oldest
    until at most ``max_stored_files`` files and ``max_stored_mb`` remain. Returns how many went."""
    files = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and path not in keep:
                    st = path.stat()
                    files.append((st.st_mtime, st.st_size, path))
            except OSError:  # deleted by a request running at the same time
                continue
    files.sort()
    now = time.time()
    count, total = len(files) + len(keep), sum(size for _, size, _ in files)
    removed = 0
    for mtime, size, path in files:
        too_old = now - mtime > limits.max_stored_age_s
        if not too_old and count <= limits.max_stored_files and total <= limits.max_stored_mb * 1024 * 1024:
            continue
        path.unlink(missing_ok=True)
        count, total, removed = count - 1, total - size, removed + 1
    for folder in folders:  # Gradio keeps each file in a folder of its own; drop the empty ones
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
    return removed


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


def public_model_name(model_name: str) -> str:
    """What visitors see of the model: a hub id as is, a local folder by its name only."""
    return Path(model_name).name if os.path.isabs(model_name) or Path(model_name).exists() else model_name


def make_edit_fn(pipe, model_name: str, run_dir: Path, limits: DemoLimits):
    """The request handler: (upload path, instruction, params) → (gallery items, download paths)."""
    gr = _import_gradio()
    out_dir = run_dir / "outputs"
    shown_model = public_model_name(model_name)

    def edit(image_path, instruction, steps, image_guidance, guidance, scheduler, seed, num_outputs, highres):
        uploads = upload_dir()
        upload = Path(image_path) if image_path else None
        prune_stored([uploads, out_dir], limits, keep=frozenset({upload} if upload else ()))
        if upload is None:
            raise gr.Error("Upload an image first.")
        if not instruction or not instruction.strip():
            raise gr.Error("Type an instruction, e.g. “Cartoonize the image.”")
        try:
            # Requests can come from the HTTP API as well as the sliders: anything may arrive.
            num_outputs = max(1, min(int(_number(num_outputs, "Number of edits")), limits.max_outputs))
            steps = max(1, min(int(_number(steps, "Steps")), limits.max_steps))
            first_seed = int(_number(seed, "Seed"))
            # The upload reaches us undecoded: our loader is the first to look inside it.
            image = read_image(upload, max_pixels=limits.max_pixels, max_side=limits.max_side)
            # Guidance is passed on as given: edit_images applies eq. 3 at any finite scale >= 0
            # and EditSettings refuses the rest, naming the guidance (issue 11, item 7).
            settings = EditSettings(
                num_inference_steps=steps, image_guidance_scale=_number(image_guidance, "Image guidance"),
                guidance_scale=_number(guidance, "Text guidance"),
                scheduler=scheduler, max_side=limits.max_side, highres="residual" if highres else "off",
            )
        except InstructSDError as err:  # a clear message in the page, naming the upload but no server path
            raise gr.Error(str(err).replace(str(upload), upload.name)) from err
        seeds = [first_seed + k for k in range(num_outputs)]
        try:
            results = edit_images(pipe, [image] * num_outputs, [instruction.strip()] * num_outputs, settings, seeds=seeds)
        except Exception as err:  # noqa: BLE001 - out of memory, a broken model: say so, without a traceback's paths
            log.exception("edit failed")
            raise gr.Error(f"The edit failed on the server ({type(err).__name__}); try a smaller image or fewer edits.") from err
        # Random names per request: requests at the same moment never collide, and nobody can
        # guess another visitor's file. The record in outputs/ is never served; visitors get a
        # copy in the private upload folder, which Gradio serves under a keyed hash.
        token = uuid.uuid4().hex
        served_dir = uploads / token
        served_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for s, result in zip(seeds, results):
            meta = {"model": shown_model, "instruction": instruction.strip(), "seed": s, **dataclasses.asdict(settings)}
            record = save_png(result, out_dir / f"{token}-{s}.png", meta)
            served = served_dir / f"edit-seed{s}.png"
            shutil.copyfile(record, served)
            paths.append(str(served))
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
            f"## Edit an image by an instruction\nModel: `{public_model_name(model_name)}`. Uploads up to "
            f"{limits.max_upload_mb:g} MB and {limits.max_pixels / 1e6:g} MP; edited at ≤ {limits.max_side} px."
        )
        with gr.Row():
            with gr.Column():
                # A plain file: gr.Image would open it with Pillow before our handler runs, and answer
                # an empty or broken upload with Gradio's generic error. Our loader (pixel limit first,
                # then EXIF, CMYK, 16-bit, ...) is the only thing that decodes it (issue 17, item 5).
                image = gr.File(label="Input image", file_count="single", type="filepath", elem_id="upload")
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
    """Serve ``demo`` on ``host`` (loopback unless asked); uploads over the byte limit are refused.

    Only the bundled examples are served from the run folder; ``outputs/`` is not. A blocking
    launch deletes the private upload folder when the server stops.
    """
    run_dir = Path(run_dir).resolve()
    try:
        return demo.launch(
            server_name=host, server_port=port, max_file_size=int(limits.max_upload_mb * 1024 * 1024),
            prevent_thread_lock=not block, share=False, quiet=not block,
            allowed_paths=[str(run_dir / "examples")],
        )
    finally:
        if block:
            shutil.rmtree(upload_dir(), ignore_errors=True)
