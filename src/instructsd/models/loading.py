"""Load the parts of a Stable Diffusion / InstructPix2Pix checkpoint, one by one.

``from_pretrained`` accepts a hub id or a local diffusers folder. For a local folder we check
up front that every component is there, so a half-copied checkpoint fails with a message
naming the missing folder instead of a deep stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from instructsd.errors import InstructSDError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Components:
    """The five parts training and editing need, wired explicitly."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler


def check_model_folder(path: str | Path) -> None:
    """Raise a clear error if a local model folder lacks a component."""
    path = Path(path)
    if not path.is_dir():
        raise InstructSDError(
            f"model folder '{path}' does not exist; pass a diffusers folder or a hub id "
            f"(make a tiny one with `instructsd model init-tiny {path}`)"
        )
    if not (path / "model_index.json").is_file():
        raise InstructSDError(f"'{path}' is not a diffusers model folder: model_index.json is missing")
    for name in COMPONENTS:
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise InstructSDError(
                f"model folder '{path}' is missing its '{name}' component ({sub}); re-copy or re-export the checkpoint"
            )


def is_local(model: str | Path) -> bool:
    """True for anything that looks like a path rather than an ``org/name`` hub id."""
    text = str(model)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1


def load_components(model: str | Path, revision: str | None = None) -> Components:
    """Load unet, vae, text encoder, tokenizer and a DDPM training scheduler from ``model``
    (``instructsd/tiny-base``: the base that ships with the package)."""
    from instructsd.models.base import resolve_model

    model = resolve_model(model)
    if is_local(model):
        check_model_folder(model)
    kw = {"revision": revision} if revision else {}
    try:
        return Components(
            unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw),
            vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **kw),
            text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
            scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
        )
    except OSError as err:  # hub id not found, offline, or a corrupt file
        raise InstructSDError(f"cannot load model '{model}': {str(err).splitlines()[0]}") from err


def torch_dtype(name: str) -> torch.dtype:
    """Map 'fp32' / 'fp16' / 'bf16' (or torch names) to a dtype, with a clear error."""
    table = {"fp32": torch.float32, "float32": torch.float32, "no": torch.float32,
             "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InstructSDError(f"unknown dtype '{name}'; use one of fp32, fp16, bf16")
    return table[name]
