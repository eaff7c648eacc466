"""Encoders: what the UNet is conditioned on and trained towards, from one batch (as in EDM2's
``training/encoders.py``).

``encoder.latents(batch, noise_gen)`` gives ``(image_latents, target_latents)``: the input
image's latent (the distribution's mode, unscaled, as the pipeline feeds it at inference) and a
draw of the edited image's latent (scaled by the VAE's factor). :class:`VAEEncoder` runs the
frozen VAE on the batch's pixels; :class:`CachedEncoder` reads the moments the latent cache
stored (train/cache.py) and draws from them with the same generator, so both give the same
numbers and the training loop never asks which one it holds. ``encoder.text(prompts)`` are the
instruction embeddings and ``encoder.null_text`` the empty prompt's, for conditioning dropout.
"""

from __future__ import annotations

import torch

from instructsd.train.cache import sample_latents
from instructsd.train.objective import encode_pair


class TextEmbeddings:
    """Frozen text-encoder outputs, computed once per distinct prompt and kept in memory.

    The reference script re-encodes every prompt (and the empty prompt) at every step
    although the encoder never changes; instruction datasets repeat a few prompts endlessly.
    With ``cache_latents`` it starts filled from the on-disk cache.
    """

    def __init__(self, tokenizer, text_encoder, device, cache: dict[str, torch.Tensor] | None = None):
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        # Kept on the CPU: a dataset with a distinct instruction per row would not fit on a GPU.
        self.cache: dict[str, torch.Tensor] = dict(cache or {})
        self.encoded = 0  # prompts run through the text encoder by this object

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            for prompt, emb in zip(missing, self.text_encoder.to(self.device)(ids)[0]):
                self.cache[prompt] = emb.cpu()
            self.encoded += len(missing)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device)


class VAEEncoder:
    """Pixels (``input_pixels``, ``edited_pixels``) through the frozen VAE at every step."""

    def __init__(self, vae, text: TextEmbeddings, device, dtype: torch.dtype):
        self.vae, self.embeddings, self.device, self.dtype = vae, text, device, dtype
        self.null_text = text([""])  # the empty prompt, encoded once (the reference re-encodes it every step)

    def latents(self, batch: dict, noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_pair(self.vae, batch["input_pixels"].to(self.device), batch["edited_pixels"].to(self.device), noise_gen)

    def text(self, prompts: list[str]) -> torch.Tensor:
        return self.embeddings(prompts).to(self.dtype)


class CachedEncoder:
    """Latents from the cache's moments (``input_latents``, ``target_moments``): no encoder runs."""

    def __init__(self, scaling_factor: float, text: TextEmbeddings, device, dtype: torch.dtype):
        self.scaling_factor, self.embeddings, self.device, self.dtype = scaling_factor, text, device, dtype
        self.null_text = text([""])

    def latents(self, batch: dict, noise_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image_latents = batch["input_latents"].to(self.device, self.dtype)
        # The same draw latent_dist.sample(noise_gen) makes, so a cached run trains on what an uncached one would.
        target = sample_latents(batch["target_moments"].to(self.device), noise_gen)
        return image_latents, (target * self.scaling_factor).to(self.dtype)

    def text(self, prompts: list[str]) -> torch.Tensor:
        return self.embeddings(prompts).to(self.dtype)
