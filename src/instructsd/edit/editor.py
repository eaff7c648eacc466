"""The one way instructsd edits an image.

The CLI, evaluation, the quickstart report and in-training validation all call
:func:`edit_images`, so sampling and guidance never drift between them. Sampling itself is
stock ``StableDiffusionInstructPix2PixPipeline`` (two-way classifier-free guidance,
Brooks et al. 2023, eq. 3); this module only chooses the scheduler, sizes and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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

from instructsd.errors import InstructSDError
from instructsd.models.loading import check_model_folder, is_local, torch_dtype

# Euler ancestral is what the InstructPix2Pix authors ship with their pipeline.
SCHEDULERS = {
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "unipc": UniPCMultistepScheduler,
}


@dataclass(frozen=True)
class EditSettings:
    """Sampling settings; defaults are the post's (20 steps, image 1.5, text 7.0)."""

    num_inference_steps: int = 20
    image_guidance_scale: float = 1.5
    guidance_scale: float = 7.0
    scheduler: str = "euler_ancestral"
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise InstructSDError(f"unknown scheduler '{self.scheduler}'; use one of {', '.join(SCHEDULERS)}")
        if self.num_inference_steps < 1:
            raise InstructSDError("num_inference_steps must be >= 1")


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_editor(model: str | Path, device: str | None = None, dtype: str = "fp32") -> StableDiffusionInstructPix2PixPipeline:
    """Load an 8-channel InstructPix2Pix pipeline from a hub id or a local folder."""
    if is_local(model):
        check_model_folder(model)
    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model, torch_dtype=torch_dtype(dtype), safety_checker=None, requires_safety_checker=False
        )
    except OSError as err:
        raise InstructSDError(f"cannot load model '{model}': {str(err).splitlines()[0]}") from err
    if pipe.unet.config.in_channels != 8:
        raise InstructSDError(
            f"'{model}' has a {pipe.unet.config.in_channels}-channel UNet; editing needs an InstructPix2Pix "
            f"(8-channel) model — fine-tune it first with `instructsd train`"
        )
    return pipe.to(device or default_device())


def pipeline_from_parts(unet, vae, text_encoder, tokenizer, scheduler) -> StableDiffusionInstructPix2PixPipeline:
    """Wrap in-memory components (e.g. during training) in the stock pipeline."""
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def fit_size(image: Image.Image, multiple: int = 8) -> Image.Image:
    """Round each side down to a multiple of ``multiple`` (aspect kept up to that rounding)."""
    w, h = image.size
    nw, nh = max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple)
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.LANCZOS)


def edit_images(
    pipe: StableDiffusionInstructPix2PixPipeline,
    images: Sequence[Image.Image],
    instructions: Sequence[str],
    settings: EditSettings = EditSettings(),
    seeds: Sequence[int] | None = None,
    batch_size: int = 1,
) -> list[Image.Image]:
    """Edit ``images[i]`` by ``instructions[i]`` with seed ``seeds[i]`` (default: i).

    Each image gets its own generator, so a result depends on its seed only — not on
    batching or on the other images. Outputs have the input's size rounded to multiples of 8.
    """
    if len(images) != len(instructions):
        raise InstructSDError(f"got {len(images)} images but {len(instructions)} instructions")
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    if len(seeds) != len(images):
        raise InstructSDError(f"got {len(images)} images but {len(seeds)} seeds")
    scheduler_cls = SCHEDULERS[settings.scheduler]
    if not isinstance(pipe.scheduler, scheduler_cls):
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device  # MPS generators are not reliable

    prepared = [fit_size(im.convert("RGB")) for im in images]
    outputs: list[Image.Image | None] = [None] * len(images)
    # Only same-size images can share a batch; group them, keeping each one's own seed.
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(prepared):
        by_size.setdefault(im.size, []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            generators = [torch.Generator(gen_device).manual_seed(int(seeds[i])) for i in chunk]
            result = pipe(
                prompt=[instructions[i] for i in chunk],
                image=[prepared[i] for i in chunk],
                negative_prompt=[settings.negative_prompt] * len(chunk) if settings.negative_prompt else None,
                num_inference_steps=settings.num_inference_steps,
                image_guidance_scale=settings.image_guidance_scale,
                guidance_scale=settings.guidance_scale,
                generator=generators,
            ).images
            for i, out in zip(chunk, result):
                outputs[i] = out
    return outputs  # type: ignore[return-value]
