"""The backbone seam: what Stable Diffusion 1.x/2.x and SDXL condition the UNet on (issue 14).

Everything else — the objective, conditioning dropout, the latent and text cache, checkpoints,
LoRA, validation and the edit function — is one code path for both. A backbone says only:

- ``encode(prompts)``: the text conditioning, a :class:`TextConditioning` of the UNet's
  ``encoder_hidden_states`` and (SDXL) the pooled ``text_embeds`` of its ``text_time`` embedding;
- ``null()``: the dropped prompt exactly as the stock pipeline feeds it for classifier-free guidance;
- ``time_ids(crops)``: SDXL's size and crop micro-conditioning, one row per sample;
- ``pipeline_class`` and ``pipeline(...)``: the stock diffusers InstructPix2Pix pipeline it saves and edits with.

SDXL follows ``StableDiffusionXLInstructPix2PixPipeline.encode_prompt`` (diffusers 0.42): both
encoders' penultimate hidden states concatenated on the feature axis, the pooled (projected)
output of the second as ``text_embeds``; with ``force_zeros_for_empty_prompt`` (SDXL's model
index sets it) the unconditional prompt is zeros, embeddings and pooled alike — so training drops
the text to zeros too, or the model would learn a null condition it never meets at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline


@dataclass
class TextConditioning:
    """A batch of encoded prompts: ``embeds`` [B, L, D] and, for SDXL, ``pooled`` [B, P]."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextConditioning:
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return TextConditioning(move(self.embeds), move(self.pooled))

    def rows(self) -> list[TextConditioning]:
        """One conditioning per prompt (for a per-prompt cache)."""
        pooled = [None] * len(self.embeds) if self.pooled is None else list(self.pooled)
        return [TextConditioning(e, p) for e, p in zip(self.embeds, pooled)]

    @staticmethod
    def stack(rows: list[TextConditioning]) -> TextConditioning:
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return TextConditioning(torch.stack([r.embeds for r in rows]), pooled)


def _tokens(tokenizer, prompts: list[str], device) -> torch.Tensor:
    """Token ids padded to the tokenizer's full length, as every SD pipeline tokenizes."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


class SDBackbone:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder's last hidden state; the null prompt is ``""`` encoded."""

    pipeline_class = StableDiffusionInstructPix2PixPipeline

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextConditioning:
        device = next(self.text_encoder.parameters()).device
        return TextConditioning(self.text_encoder(_tokens(self.tokenizer, prompts, device))[0])

    def null(self) -> TextConditioning:
        return self.null_from(self.encode([""]))

    def null_from(self, empty: TextConditioning) -> TextConditioning:
        """The dropped prompt given the empty prompt's encoding: that encoding itself."""
        return empty

    def time_ids(self, crops: torch.Tensor | None) -> None:
        return None

    def vae_dtype(self, vae, weight_dtype: torch.dtype) -> torch.dtype:
        """SD's VAE runs in the run's weight dtype (its pipeline never upcasts it)."""
        return weight_dtype

    def pipeline(self, unet, vae, scheduler, **extra):
        """The stock pipeline around these encoders (no safety checker unless given)."""
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False, **extra}
        return self.pipeline_class(vae=vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                                   scheduler=scheduler, **extra)


class SDXLBackbone:
    """SDXL: CLIP-L and OpenCLIP bigG, penultimate layers concatenated, bigG's pooled projection, size/crop time ids."""

    pipeline_class = StableDiffusionXLInstructPix2PixPipeline

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, force_zeros_for_empty_prompt: bool = True):
        self.tokenizers, self.text_encoders = (tokenizer, tokenizer_2), (text_encoder, text_encoder_2)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextConditioning:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(_tokens(tokenizer, prompts, next(encoder.parameters()).device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # the penultimate layer, as SDXL was trained
            pooled = out[0]  # the last encoder's (bigG's) projected pooled output: text_embeds
        return TextConditioning(torch.cat(hidden, dim=-1), pooled)

    def null(self) -> TextConditioning:
        return self.null_from(self.encode([""]))

    def null_from(self, empty: TextConditioning) -> TextConditioning:
        """The dropped prompt given the empty prompt's encoding: zeros with ``force_zeros_for_empty_prompt``
        (the pipeline's unconditional branch), else that encoding."""
        if self.force_zeros_for_empty_prompt:
            return TextConditioning(torch.zeros_like(empty.embeds), torch.zeros_like(empty.pooled))
        return empty

    def time_ids(self, crops: torch.Tensor | None) -> torch.Tensor:
        """SDXL's micro-conditioning (Podell et al. 2023, sec. 2.2), one row per sample:
        original (height, width), crop (top, left), target (height, width) — the order of the
        pipeline's ``_get_add_time_ids``, which gives every sample (H, W, 0, 0, H, W) at inference."""
        if crops is None:
            raise ValueError("SDXL needs each sample's size and crop ('crops' in the batch)")
        return crops.float()

    def vae_dtype(self, vae, weight_dtype: torch.dtype) -> torch.dtype:
        """fp32 under fp16 when the VAE's config says fp16 overflows (``force_upcast``: SDXL's VAE; the
        pipeline upcasts it too); a fixed fp16 VAE (``force_upcast: false``) runs in fp16."""
        return torch.float32 if weight_dtype == torch.float16 and vae.config.get("force_upcast", True) else weight_dtype

    def pipeline(self, unet, vae, scheduler, **extra):
        tokenizer, tokenizer_2 = self.tokenizers
        text_encoder, text_encoder_2 = self.text_encoders
        return self.pipeline_class(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                   tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                   force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, **extra)


Backbone = SDBackbone | SDXLBackbone


def backbone_of(parts) -> Backbone:
    """The backbone of a model's parts (``models.loading.Components`` or a loaded pipeline)."""
    if getattr(parts, "text_encoder_2", None) is not None:
        force_zeros = getattr(parts, "force_zeros_for_empty_prompt", None)
        if force_zeros is None:  # a pipeline keeps it in its config
            force_zeros = parts.config.get("force_zeros_for_empty_prompt", True)
        return SDXLBackbone(parts.tokenizer, parts.text_encoder, parts.tokenizer_2, parts.text_encoder_2, bool(force_zeros))
    return SDBackbone(parts.tokenizer, parts.text_encoder)

