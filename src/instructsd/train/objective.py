"""The InstructPix2Pix training objective (Brooks et al. 2023, "InstructPix2Pix", sec. 3.2).

    L = E_{E(x), E(c_I), c_T, ε, t} ‖ target − ε_θ(z_t ‖ E(c_I), t, c_T) ‖²

z_t is the edited image's latent noised to step t; E(c_I), the latent of the input image, is
concatenated on the channel axis. For classifier-free guidance on both conditions
(sec. 3.2.1) the text is replaced by the empty prompt, the image latent by zeros, or both,
each with its own probability. Randomness comes only from the generator passed in.

Optionally (issue 16) the squared error is weighted per latent element by where the edit is:
the automatic edit mask of the pair (``eval.edit_metrics``, the mask the validation metrics use),
downsampled to the latent grid, weighs the edited region by ``edit_region_weight`` and the rest
by ``keep_region_weight``. Weights 1/1 are the plain loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from instructsd.eval.edit_metrics import edit_mask_tensor


@dataclass(frozen=True, kw_only=True)
class DropoutProbs:
    """Probabilities of the three conditioning-dropout cases; they are disjoint.

    Keyword-only: three positional floats of one type could be swapped unnoticed (issue 13).
    """

    text: float = 0.05
    image: float = 0.05
    both: float = 0.05


def conditioning_dropout(batch_size: int, probs: DropoutProbs, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample masks (drop_text, drop_image) for the four cases.

    One uniform draw per sample picks exactly one case: text only with p.text, image only
    with p.image, both with p.both, neither otherwise.
    """
    u = torch.rand(batch_size, generator=generator, device=generator.device)
    text_only = u < probs.text
    image_only = (u >= probs.text) & (u < probs.text + probs.image)
    both = (u >= probs.text + probs.image) & (u < probs.text + probs.image + probs.both)
    return text_only | both, image_only | both


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet regresses: ε, v = α_t ε − σ_t x₀ (Salimans & Ho 2022), or x₀ itself."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


@torch.no_grad()
def encode_pair(vae: AutoencoderKL, input_pixels: torch.Tensor, edited_pixels: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of the input image (the distribution's mode, unscaled) and of the target.

    The input latent is unscaled and deterministic because that is exactly what
    ``StableDiffusionInstructPix2PixPipeline.prepare_image_latents`` feeds the UNet at
    inference; training on anything else is a train/test mismatch. The target latent is a
    sample, scaled by the VAE's scaling factor, as in Stable Diffusion's training.
    """
    dtype = next(vae.parameters()).dtype
    image_latents = vae.encode(input_pixels.to(dtype)).latent_dist.mode()
    target = vae.encode(edited_pixels.to(dtype)).latent_dist.sample(generator=generator)
    return image_latents, target * vae.config.scaling_factor


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting", eq. 8).

    SNR(t) = ᾱ_t / (1 − ᾱ_t). The x₀-loss weight is min(SNR, γ); written for the ε target
    that is min(SNR, γ) / SNR and for the v target min(SNR, γ) / (SNR + 1).
    """
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def region_weight_map(input_pixels: torch.Tensor, edited_pixels: torch.Tensor, inside: float, outside: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, H, W) of pairs on [-1, 1]: ``inside`` on the edit mask, ``outside`` elsewhere."""
    mask = edit_mask_tensor((input_pixels + 1) / 2, (edited_pixels + 1) / 2).float()
    return outside + (inside - outside) * mask


def region_weights(cfg, batch: dict) -> torch.Tensor | None:
    """The batch's pixel weights under ``cfg.edit_region_weight`` / ``cfg.keep_region_weight``; None when both are 1."""
    if cfg.edit_region_weight == 1 and cfg.keep_region_weight == 1:
        return None
    return region_weight_map(batch["input_pixels"], batch["edited_pixels"], cfg.edit_region_weight, cfg.keep_region_weight)


def instruct_pix2pix_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    image_latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    null_text_embedding: torch.Tensor,
    probs: DropoutProbs,
    generator: torch.Generator,
    prediction_type: str = "epsilon",
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    pooled: torch.Tensor | None = None,
    null_pooled: torch.Tensor | None = None,
    time_ids: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean-squared error of one InstructPix2Pix training step.

    ``latents`` are the scaled target latents, ``image_latents`` the unscaled input-image
    latents, ``null_text_embedding`` the encoding of the empty prompt (computed once by the
    caller, shape [1, L, D]). ``noise_offset`` > 0 adds a per-channel constant to the noise
    (Guttenberg 2023, "Diffusion with offset noise") so very dark or bright images are learnable.
    SDXL (models/backbone.py) adds the pooled text ``pooled`` [B, P], dropped to ``null_pooled``
    [1, P] together with the text, and the per-sample size/crop ``time_ids`` [B, 6], never dropped.
    ``weights`` (B, 1, H, W) in pixels (:func:`region_weights`) are averaged over each latent cell
    (area downsampling to the latents' grid, so a cell half inside the mask gets the mean weight) and
    multiply the squared error element-wise.
    """
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents)
    if noise_offset > 0:
        offset = torch.randn((bsz, latents.shape[1], 1, 1), generator=generator, device=generator.device)
        noise = noise + noise_offset * offset.to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=generator.device)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)

    drop_text, drop_image = conditioning_dropout(bsz, probs, generator)
    drop_text = drop_text.to(latents.device)
    drop_image = drop_image.to(latents.device)
    text = torch.where(drop_text[:, None, None], null_text_embedding.to(text_embeddings), text_embeddings)
    image = image_latents * (~drop_image).to(image_latents)[:, None, None, None]

    added = None
    if pooled is not None:  # SDXL's text_time embedding: the pooled text follows the text's dropout
        pooled = torch.where(drop_text[:, None], null_pooled.to(pooled), pooled)
        added = {"text_embeds": pooled, "time_ids": time_ids.to(pooled)}
    pred = unet(torch.cat([noisy, image], dim=1), timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample
    target = training_target(scheduler, latents, noise, timesteps, prediction_type)
    if snr_gamma is None and weights is None:
        return F.mse_loss(pred.float(), target.float())
    error = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weights is not None:
        error = error * F.adaptive_avg_pool2d(weights.to(error), latents.shape[-2:])
    if snr_gamma is None:
        return error.mean()
    per_sample = error.mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, timesteps, snr_gamma, prediction_type)).mean()
