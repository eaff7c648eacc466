"""One micro-batch's loss: the batch through the encoders (train/encoders.py) into the objective.

The same for every data mode and both backbones: SD 1.x/2.x conditions on the text embeddings;
SDXL adds the pooled text and the per-sample size/crop time ids (models/backbone.py), which
``instruct_pix2pix_loss`` drops and passes exactly as it does the text.
"""

from __future__ import annotations

import torch

from instructsd.train.kinds import without_t2i_images
from instructsd.train.objective import DropoutProbs, instruct_pix2pix_loss


def batch_loss(cfg, unet, scheduler, encoder, batch: dict, noise_gen: torch.Generator, probs: DropoutProbs,
               prediction_type: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The InstructPix2Pix loss of ``batch`` (its latents, conditioning dropout and noise drawn from ``noise_gen``)."""
    image_latents, latents = encoder.latents(batch, noise_gen)
    image_latents = without_t2i_images(image_latents, batch.get("kinds"))  # text-to-image rows: train/kinds.py
    text, null = encoder.text(batch["prompts"]), encoder.null_text
    return instruct_pix2pix_loss(unet, scheduler, latents, image_latents, text.embeds, null.embeds, probs, noise_gen,
                                 prediction_type, snr_gamma=cfg.snr_gamma, noise_offset=cfg.noise_offset,
                                 pooled=text.pooled, null_pooled=null.pooled, time_ids=encoder.time_ids(batch),
                                 weights=weights)
