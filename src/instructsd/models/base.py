"""The tiny instruction-following base that ships inside the package (made by `model pretrain-tiny`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from instructsd.errors import InstructSDError

TINY_BASE_DIR = Path(__file__).parent / "tiny_base"
TINY_BASE_ALIAS = "instructsd/tiny-base"
"""Name that resolves to the shipped base wherever a model is accepted (``base_model=instructsd/tiny-base``)."""


def tiny_base_path() -> Path:
    """Folder of the shipped base (a stock diffusers InstructPix2Pix folder)."""
    if not (TINY_BASE_DIR / "model_index.json").is_file():
        raise InstructSDError(
            f"the shipped tiny base is missing from {TINY_BASE_DIR}; reinstall instructsd, or make one with "
            "`instructsd model pretrain-tiny runs/pretrain` and copy runs/pretrain/model there"
        )
    return TINY_BASE_DIR


def tiny_base_record(path: Path | None = None) -> dict:
    """The base's pretrain.json: the recipe, its inference settings and its recorded metrics."""
    path = path or tiny_base_path()
    return json.loads((path / "pretrain.json").read_text())


def resolve_model(model: str | Path) -> str | Path:
    """Map the alias of the shipped base to its folder; anything else is returned unchanged."""
    return tiny_base_path() if str(model) == TINY_BASE_ALIAS else model


def scratch_start(base: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A 4-channel Stable-Diffusion-layout model sharing ``base``'s autoencoder, text encoder,
    tokenizer and scheduler, with an untrained UNet of the same architecture.

    It is the miniature of "start from plain SD": no instruction-following UNet, same latent
    space and text encoder; the trainer expands its conv_in to 8 channels.
    """
    from diffusers import UNet2DConditionModel

    from instructsd.models.loading import load_components
    from instructsd.models.tiny import save_pipeline

    parts = load_components(base)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**parts.unet.config, "in_channels": 4})
    return save_pipeline(out, unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler, overwrite=True)
