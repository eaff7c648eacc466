"""Tiny Stable Diffusion / InstructPix2Pix models built from code, for CPU tests and the quickstart.

Every component is the real diffusers/transformers class, only small, so a folder written
here loads in stock ``StableDiffusionInstructPix2PixPipeline.from_pretrained`` like any
checkpoint from the hub.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from instructsd.data.tasks import TASKS
from instructsd.errors import InstructSDError
from instructsd.files import atomic_dir
from instructsd.models.tokenizer import MODEL_MAX_LENGTH, train_tokenizer, write_vocab_files


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model. Defaults give ~1 M UNet parameters and an autoencoder of factor 2."""

    unet_channels: tuple[int, ...] = (32, 64, 64)
    """UNet width per resolution level; the first level has no attention."""
    text_dim: int = 64
    """Width of the text encoder and of the UNet's cross-attention."""
    text_layers: int = 2
    """Transformer layers in the text encoder."""
    vae_channels: tuple[int, ...] = (32, 64)
    """Autoencoder width per level; len - 1 halvings, so (32, 64) downsamples by 2."""
    vocab_size: int = 1024
    """Target BPE vocabulary size (the 512 byte symbols and 2 specials included)."""
    sample_size: int = 64
    """Native image size in pixels."""
    unet_norm_groups: int | None = None
    """GroupNorm groups in the UNet (None: min(32, first width)). Fewer groups keep more of each
    image's absolute colour and contrast through the normalisations (see benchmarks/RESULTS.md)."""
    vae_norm_groups: int | None = None
    """GroupNorm groups in the autoencoder (None: min(32, first width)). With one group per channel
    the decoder's last normalisation removes each crop's own mean colour, which it then has to
    guess: 1 group reconstructs unseen colour photos far better (benchmarks/RESULTS.md)."""


def build_tiny_components(spec: TinySpec = TinySpec(), in_channels: int = 8, seed: int = 0, tokenizer_dir: Path | None = None):
    """Build (unet, vae, text_encoder, tokenizer, scheduler) with seeded random weights."""
    if in_channels not in (4, 8):
        raise InstructSDError(f"--in-channels must be 4 (Stable Diffusion) or 8 (InstructPix2Pix), got {in_channels}")
    torch.manual_seed(seed)
    # The tokenizer learns our tasks' words. Photo operations (issue 15) are left out: their hundreds of
    # amount-stating wordings would change every tiny model's vocabulary (and the pinned losses built on
    # it); byte-level BPE still encodes them, a few more tokens each.
    texts = [text for task in TASKS.values() if task.photo_op is None for text in task.instructions]
    tok_dir = tokenizer_dir or Path(tempfile.mkdtemp(prefix="instructsd-tok-"))
    tokenizer = train_tokenizer(texts, tok_dir, vocab_size=spec.vocab_size)

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_dim,
            intermediate_size=2 * spec.text_dim,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae_factor = 2 ** (len(spec.vae_channels) - 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
        block_out_channels=spec.vae_channels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=spec.vae_norm_groups or min(32, spec.vae_channels[0]),
        sample_size=spec.sample_size,
        # Self-attention over every latent pixel dominates a tiny VAE's cost and buys little.
        mid_block_add_attention=False,
    )
    levels = len(spec.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=spec.sample_size // vae_factor,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=spec.text_dim,
        attention_head_dim=8,
        norm_num_groups=spec.unet_norm_groups or min(32, spec.unet_channels[0]),
    )
    # Stable Diffusion's training schedule, so the tiny model exercises the same code paths.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return unet, vae, text_encoder, tokenizer, scheduler


def save_pipeline(out_dir: str | Path, unet, vae, text_encoder, tokenizer, scheduler, overwrite: bool = False) -> Path:
    """Write a diffusers pipeline folder atomically (temp folder, then rename).

    8-channel UNets become a ``StableDiffusionInstructPix2PixPipeline``, 4-channel ones a
    ``StableDiffusionPipeline``. No safety checker is saved (the models here are ours).
    """
    out_dir = Path(out_dir)
    cls = StableDiffusionInstructPix2PixPipeline if unet.config.in_channels == 8 else StableDiffusionPipeline
    pipe = cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(out_dir, overwrite) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_vocab_files(tokenizer, tmp / "tokenizer")
    return out_dir


def init_tiny(out_dir: str | Path, in_channels: int = 8, spec: TinySpec = TinySpec(), seed: int = 0, overwrite: bool = False) -> Path:
    """Write a tiny diffusers model folder (random weights) to ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="instructsd-tok-") as tok_dir:
        parts = build_tiny_components(spec, in_channels=in_channels, seed=seed, tokenizer_dir=Path(tok_dir))
        return save_pipeline(out_dir, *parts, overwrite=overwrite)


# ----------------------------------------------------------------------------
# Tiny random CLIP and DINO for the metric suite (tests, CPU benchmarks): real classes, tiny sizes.


def save_tiny_clip(out: str | Path, texts: Iterable[str], image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random CLIP (model, image processor, BPE tokenizer) that `ClipEmbedder.load` reads.

    ``texts``: what its tokenizer learns, i.e. the captions it will score (the evaluation's own
    caption table; passed in because the model layer knows nothing of evaluation).
    """
    # Imported on use: only these builders need CLIP/ViT classes (and ViT's processor warns on import without torchvision).
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    tokenizer = train_tokenizer(list(texts), out, vocab_size=600)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def save_tiny_dino(out: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random DINO-style ViT (model and image processor) that `DinoEmbedder.load` reads."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = Path(out)
    torch.manual_seed(seed)
    ViTModel(ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2), add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out
