"""Encoders: what the UNet is conditioned on and trained towards, from one batch (as in EDM2's
``training/encoders.py``).

``encoder.latents(batch, noise_gen)`` gives ``(image_latents, target_latents)``: the input
image's latent (the distribution's mode, unscaled, as the pipeline feeds it at inference) and a
draw of the edited image's latent (scaled by the VAE's factor). :class:`VAEEncoder` runs the
frozen VAE on the batch's pixels; :class:`CachedEncoder` reads the moments the latent cache
stored (train/cache.py) and draws from them with the same generator, so both give the same
numbers and the training loop never asks which one it holds. ``encoder.text(prompts)`` is the
instructions' conditioning and ``encoder.null_text`` the dropped prompt's, both
:class:`~instructsd.models.backbone.TextConditioning`; ``encoder.time_ids(batch)`` SDXL's
per-sample size and crop (None for SD 1.x/2.x). The backbone (models/backbone.py) decides what
each is, so SD and SDXL share this code.
"""

from __future__ import annotations

import torch

from instructsd.models.backbone import Backbone, TextConditioning, backbone_of
from instructsd.train.batches import Batches, TrainRows, training_batches
from instructsd.train.cache import build_or_load, sample_latents
from instructsd.train.objective import encode_pair


class TextEmbeddings:
    """Frozen text-encoder outputs, computed once per distinct prompt and kept in memory.

    The reference scripts re-encode every prompt (and the empty prompt) at every step — the SDXL
    one inside the dataset transform — although the encoders never change; instruction datasets
    repeat a few prompts endlessly. With ``cache_latents`` it starts filled from the on-disk cache.
    """

    def __init__(self, backbone: Backbone, device, cache: dict[str, TextConditioning] | None = None):
        self.backbone, self.device = backbone, device
        # Kept on the CPU: a dataset with a distinct instruction per row would not fit on a GPU.
        self.cache: dict[str, TextConditioning] = dict(cache or {})
        self.encoded = 0  # prompts run through the text encoder(s) by this object

    def __call__(self, prompts: list[str]) -> TextConditioning:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            for prompt, row in zip(missing, self.backbone.encode(missing).to("cpu").rows()):
                self.cache[prompt] = row
            self.encoded += len(missing)
        return TextConditioning.stack([self.cache[p] for p in prompts]).to(self.device)

    def null(self) -> TextConditioning:
        """The dropped prompt as the pipeline feeds it: "" encoded (once), or SDXL's zeros."""
        return self.backbone.null_from(self([""]))


class VAEEncoder:
    """Pixels (``input_pixels``, ``edited_pixels``) through the frozen VAE at every step."""

    def __init__(self, vae, text: TextEmbeddings, device, dtype: torch.dtype):
        self.vae, self.embeddings, self.device, self.dtype = vae, text, device, dtype
        self.null_text = text.null().to(device, dtype)  # encoded once (the reference re-encodes it every step)

    def latents(self, batch: dict, noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image_latents, target = encode_pair(self.vae, batch["input_pixels"].to(self.device),
                                            batch["edited_pixels"].to(self.device), noise_gen)
        return image_latents.to(self.dtype), target.to(self.dtype)  # an upcast (force_upcast) VAE gives fp32

    def text(self, prompts: list[str]) -> TextConditioning:
        return self.embeddings(prompts).to(self.device, self.dtype)

    def time_ids(self, batch: dict) -> torch.Tensor | None:
        return _time_ids(self.embeddings.backbone, batch, self.device)


class CachedEncoder:
    """Latents from the cache's moments (``input_latents``, ``target_moments``): no encoder runs."""

    def __init__(self, scaling_factor: float, text: TextEmbeddings, device, dtype: torch.dtype):
        self.scaling_factor, self.embeddings, self.device, self.dtype = scaling_factor, text, device, dtype
        self.null_text = text.null().to(device, dtype)

    def latents(self, batch: dict, noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image_latents = batch["input_latents"].to(self.device, self.dtype)
        # The same draw latent_dist.sample(noise_gen) makes, so a cached run trains on what an uncached one would.
        target = sample_latents(batch["target_moments"].to(self.device), noise_gen)
        return image_latents, (target * self.scaling_factor).to(self.dtype)

    def text(self, prompts: list[str]) -> TextConditioning:
        return self.embeddings(prompts).to(self.device, self.dtype)

    def time_ids(self, batch: dict) -> torch.Tensor | None:
        return _time_ids(self.embeddings.backbone, batch, self.device)


def _time_ids(backbone: Backbone, batch: dict, device) -> torch.Tensor | None:
    ids = backbone.time_ids(batch.get("crops"))
    return None if ids is None else ids.to(device)


# --- the frozen parts, and the one place that knows the data mode ----------------------------------


def freeze(components) -> None:
    """The VAE and text encoder(s) never train."""
    for module in (components.vae, *components.text_encoders()):
        module.requires_grad_(False).eval()


def place_frozen(components, device, weight_dtype: torch.dtype) -> None:
    """Put the frozen parts on ``device`` in the run's weight dtype — except a VAE whose config
    asks for fp32 (``force_upcast``: SDXL's VAE overflows in fp16, and its pipeline upcasts it too)."""
    components.vae.to(device, dtype=backbone_of(components).vae_dtype(components.vae, weight_dtype))
    for encoder in components.text_encoders():
        encoder.to(device, dtype=weight_dtype)


def encoder_and_batches(cfg, data: TrainRows, components, accelerator, weight_dtype: torch.dtype, progress: bool,
                        agree=None) -> tuple[VAEEncoder | CachedEncoder, Batches]:
    """Latents from the cache, or pixels (map-style or streamed) and the VAE; text through the model's backbone."""
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    backbone = backbone_of(components)
    if cfg.cache_latents:
        cache = build_or_load(cfg, data.rows, components, device, accelerator.is_main_process, accelerator.wait_for_everyone,
                              progress=progress, buckets=data.buckets, assigned=data.assigned)
        encoder = CachedEncoder(components.vae.config.scaling_factor, TextEmbeddings(backbone, device, cache.text), device,
                                weight_dtype)
        return encoder, training_batches(cfg, data, cache, rank=rank, world=world, agree=agree)
    place_frozen(components, device, weight_dtype)
    encoder = VAEEncoder(components.vae, TextEmbeddings(backbone, device), device, weight_dtype)
    return encoder, training_batches(cfg, data, rank=rank, world=world, agree=agree)
