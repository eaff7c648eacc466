"""The one way instructsd edits an image.

The CLI, evaluation, the quickstart report and in-training validation all call
:func:`edit_images`, so sampling and guidance never drift between them. Sampling itself is
stock ``StableDiffusionInstructPix2PixPipeline`` — or ``StableDiffusionXLInstructPix2PixPipeline``
for SDXL models (models/backbone.py) — with two-way classifier-free guidance (Brooks et al.
2023, eq. 3); this module only chooses the scheduler, sizes and seeds, and makes the pipeline
apply eq. 3 at every pair of scales (instructsd.edit.guidance). The output has the input's size:
the SD pipeline takes it from the image, the SDXL one would default to its sample size × 8, so
the height and width are always passed where the pipeline takes them.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

from instructsd.edit.guidance import (
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULER_NAMES,
    check_guidance,
    guided_at_any_scale,
)
from instructsd.edit.highres import HIGHRES_METHODS
from instructsd.errors import InstructSDError
from instructsd.models.backbone import SDXLBackbone, backbone_of
from instructsd.models.loading import check_model, is_sdxl_index, model_index_of, resolve_model, torch_dtype

# Euler ancestral is what the InstructPix2Pix authors ship with their pipeline.
# Names from edit/guidance.py (the one list, also read by TrainConfig), in its order.
SCHEDULERS = dict(zip(SCHEDULER_NAMES, (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,
                                        DDIMScheduler, UniPCMultistepScheduler), strict=True))


HIGHRES_MODES = ("off", *HIGHRES_METHODS)


@dataclass(frozen=True)
class EditSettings:
    """Sampling settings; defaults are the post's (20 steps, image 1.5, text 7.0)."""

    num_inference_steps: int = DEFAULT_STEPS
    image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE
    """s_I of eq. 3: how strongly the edit stays close to the input. Any finite value >= 0
    is applied (instructsd.edit.guidance), also below 1 where the stock pipeline ignores it."""
    guidance_scale: float = DEFAULT_GUIDANCE
    """s_T of eq. 3: how strongly the edit follows the instruction; any finite value >= 0."""
    scheduler: str = "auto"
    """A name from SCHEDULERS, or 'auto': the model's own sampler when it is one of them (a
    hub InstructPix2Pix ships Euler ancestral, the post's), else Euler ancestral; Euler for
    models that predict clean latents, which Euler ancestral cannot sample."""
    negative_prompt: str | None = None
    max_side: int | None = None
    """Downscale inputs so their longer side is at most this (aspect kept); None: keep size."""
    highres: str = "off"
    """'off': edit at the input's size. 'residual' or 'guided': inputs whose longer side
    exceeds ``native_side`` are edited at ``native_side`` and the change is transferred to
    the full-size input — as an upsampled difference, or by a fast guided filter (see
    instructsd.edit.highres and docs/editing.md)."""
    native_side: int | None = None
    """Longer side the model edits at in the high-res modes; None: the model's own (UNet
    sample size × VAE factor, 512 px for Stable Diffusion 1.5)."""

    def __post_init__(self) -> None:
        if self.scheduler != "auto" and self.scheduler not in SCHEDULERS:
            raise InstructSDError(f"unknown scheduler '{self.scheduler}'; use auto or one of {', '.join(SCHEDULERS)}")
        if self.num_inference_steps < 1:
            raise InstructSDError("num_inference_steps must be >= 1")
        check_guidance(self.image_guidance_scale, self.guidance_scale)
        if self.highres not in HIGHRES_MODES:
            raise InstructSDError(f"unknown highres mode '{self.highres}'; use one of {', '.join(HIGHRES_MODES)}")
        for name in ("max_side", "native_side"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise InstructSDError(f"{name} must be >= 8 pixels (got {value})")


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_pipeline(model: str | Path, device: str | None = None, dtype: str = "fp32") -> StableDiffusionInstructPix2PixPipeline:
    """Load an 8-channel InstructPix2Pix pipeline from a hub id or a local folder
    (``instructsd/tiny-base``: the base that ships with the package)."""
    model = resolve_model(model)
    check_model(model)
    try:
        if is_sdxl_index(model_index_of(model)):  # SDXL has no safety checker to switch off
            pipe = SDXLBackbone.pipeline_class.from_pretrained(model, torch_dtype=torch_dtype(dtype), use_safetensors=True)
        else:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                model, torch_dtype=torch_dtype(dtype), safety_checker=None, requires_safety_checker=False,
                use_safetensors=True)
    except OSError as err:
        raise InstructSDError(f"cannot load model '{model}': {str(err).splitlines()[0]}") from err
    if pipe.unet.config.in_channels != 8:
        raise InstructSDError(
            f"'{model}' has a {pipe.unet.config.in_channels}-channel UNet; editing needs an InstructPix2Pix "
            f"(8-channel) model — fine-tune it first with `instructsd train`"
        )
    return pipe.to(device or default_device())


def pipeline_from_components(parts, unet, scheduler):
    """The stock pipeline (SD or SDXL, by the parts' backbone) around a UNet and a model's frozen parts."""
    return backbone_of(parts).pipeline(unet, parts.vae, scheduler)


def fit_size(image: Image.Image, multiple: int = 8, max_side: int | None = None) -> Image.Image:
    """Round each side down to a multiple of ``multiple`` (aspect kept up to that rounding).

    With ``max_side``, first scale down (never up) so the longer side is at most ``max_side``.
    """
    w, h = image.size
    scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
    sw, sh = w * scale, h * scale
    nw, nh = max(multiple, int(sw) // multiple * multiple), max(multiple, int(sh) // multiple * multiple)
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.LANCZOS)


def native_side(pipe: StableDiffusionInstructPix2PixPipeline) -> int:
    """The longer side, in pixels, the model was trained at (UNet sample size × VAE factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def bounded_settings(settings: EditSettings, pipe) -> EditSettings:
    """Bounded memory by default (issue 17): without the high-res carry-back the model edits at the
    output size, so that size defaults to the model's own; a larger one is the user's explicit choice."""
    if settings.highres == "off" and settings.max_side is None:
        return dataclasses.replace(settings, max_side=settings.native_side or native_side(pipe))
    return settings


def configure_pipeline(
    pipe: StableDiffusionInstructPix2PixPipeline,
    attention_slicing: bool = False,
    vae_tiling: bool = False,
    cpu_offload: bool = False,
    compile_unet: bool = False,
) -> StableDiffusionInstructPix2PixPipeline:
    """Memory and speed options, all stock diffusers / torch features.

    - attention slicing: attention in slices, less peak memory, a little slower;
    - VAE tiling: encode/decode large images tile by tile (needed above ~1024 px on 8 GB GPUs);
    - CPU offload: keep each model on the CPU until it runs (needs accelerate and CUDA);
    - compile: ``torch.compile`` the UNet (slow first call, faster after).
    """
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if cpu_offload:
        if not torch.cuda.is_available():
            raise InstructSDError("CPU offload needs a CUDA GPU; drop --cpu-offload on this machine")
        try:
            import accelerate  # noqa: F401
        except ImportError as err:
            raise InstructSDError("CPU offload needs accelerate: pip install accelerate") from err
        pipe.enable_model_cpu_offload()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def edit_images(
    pipe: StableDiffusionInstructPix2PixPipeline,
    images: Sequence[Image.Image],
    instructions: Sequence[str],
    settings: EditSettings = EditSettings(),
    seeds: Sequence[int] | None = None,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Image.Image]:
    """Edit ``images[i]`` by ``instructions[i]`` with seed ``seeds[i]`` (default: i).

    Each image gets its own generator, so a result depends on its seed only — not on
    batching or on the other images (up to float rounding, ±1 level). Outputs have the input's size (after ``max_side``)
    rounded to multiples of 8. ``progress(n)`` is called after each batch with the number
    of images it finished.
    """
    if len(images) != len(instructions):
        raise InstructSDError(f"got {len(images)} images but {len(instructions)} instructions")
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    if len(seeds) != len(images):
        raise InstructSDError(f"got {len(images)} images but {len(seeds)} seeds")
    # A scheduler carries per-call state (timesteps, step index), so two threads sharing one
    # pipeline (the demo with --concurrency > 1) must take turns with it.
    with _pipeline_lock(pipe):
        return _edit_locked(pipe, images, instructions, settings, seeds, batch_size, progress)


_LOCKS_GUARD = threading.Lock()


def _pipeline_lock(pipe) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = pipe.__dict__.get("_instructsd_lock")
        if lock is None:
            lock = threading.Lock()
            pipe.__dict__["_instructsd_lock"] = lock
        return lock


def resolve_scheduler(pipe, name: str) -> str:
    """The sampler ``name`` means for ``pipe`` ('auto' resolved as EditSettings.scheduler says)."""
    if name != "auto":
        return name
    own_cls = pipe.__dict__.setdefault("_instructsd_own_scheduler", type(pipe.scheduler))  # before any swap
    own = next((key for key, cls in SCHEDULERS.items() if own_cls is cls), None)
    if own is None or own == "euler_ancestral":
        return "euler" if pipe.scheduler.config.get("prediction_type") == "sample" else "euler_ancestral"
    return own


def _edit_locked(pipe, images, instructions, settings, seeds, batch_size, progress) -> list[Image.Image]:
    pipe.__dict__.setdefault("_instructsd_own_scheduler", type(pipe.scheduler))
    name = resolve_scheduler(pipe, settings.scheduler)
    scheduler_cls = SCHEDULERS[name]
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction == "sample" and name == "euler_ancestral":
        raise InstructSDError(
            "this model predicts the clean latents (prediction_type 'sample'), which diffusers' Euler ancestral "
            "sampler does not support; choose another scheduler (euler, ddim, dpmpp or unipc)"
        )
    if not isinstance(pipe.scheduler, scheduler_cls):
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    # SDXL's pipeline sizes its output from the UNet's sample size unless told (SD's from the image).
    sized = "height" in inspect.signature(type(pipe).__call__).parameters
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device  # MPS generators are not reliable

    if batch_size < 1:
        raise InstructSDError(f"batch_size must be >= 1 (got {batch_size})")
    full = [fit_size(im.convert("RGB"), max_side=settings.max_side) for im in images]
    if settings.highres != "off":
        side = settings.native_side or native_side(pipe)
        prepared = [fit_size(im, max_side=side) for im in full]
    else:
        prepared = full
    outputs: list[Image.Image | None] = [None] * len(images)
    # Only same-size images can share a batch; group them, keeping each one's own seed.
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(prepared):
        by_size.setdefault(im.size, []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            generators = [torch.Generator(gen_device).manual_seed(int(seeds[i])) for i in chunk]
            with guided_at_any_scale(pipe, settings.image_guidance_scale, settings.guidance_scale):
                result = pipe(
                    prompt=[instructions[i] for i in chunk],
                    image=[prepared[i] for i in chunk],
                    negative_prompt=[settings.negative_prompt] * len(chunk) if settings.negative_prompt else None,
                    num_inference_steps=settings.num_inference_steps,
                    image_guidance_scale=settings.image_guidance_scale,
                    guidance_scale=settings.guidance_scale,
                    generator=generators,
                    **({"height": prepared[chunk[0]].height, "width": prepared[chunk[0]].width} if sized else {}),
                ).images
            for i, out in zip(chunk, result):
                # High-res modes: the low-resolution edit says *what* changes; the full-resolution
                # input supplies the detail (instructsd.edit.highres).
                transfer = HIGHRES_METHODS.get(settings.highres)
                outputs[i] = out if prepared[i] is full[i] else transfer(full[i], prepared[i], out)
            if progress is not None:
                progress(len(chunk))
    return outputs  # type: ignore[return-value]
