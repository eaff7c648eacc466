"""Model folders laid out exactly like the hub's Stable Diffusion checkpoints, built in code.

``write_hub_model`` writes a diffusers folder with the files, config keys and component classes
of ``timbrooks/instruct-pix2pix`` (8-channel UNet, Euler ancestral sampler) or
``runwayml/stable-diffusion-v1-5`` (4-channel UNet, PNDM sampler): safety checker and feature
extractor included, a factor-8 autoencoder, CLIP-L's 768-wide text features and CLIP's real BPE
tokenizer (49,408 entries). Weights are random. The SDXL layouts are those of
``diffusers/sdxl-instructpix2pix-768`` (``sdxl-instruct-pix2pix``: 8-channel UNet) and
``stabilityai/stable-diffusion-xl-base-1.0`` (``sdxl``: 4-channel): a UNet with the ``text_time``
addition embedding, CLIP-L plus OpenCLIP-bigG with projection as the two text encoders, two
tokenizers (the second pads with "!"), Euler sampler, a factor-8 autoencoder with
``force_upcast``, and ``force_zeros_for_empty_prompt`` in the model index (issue 14). ``size="tiny"`` keeps every key and structure
but shrinks channel counts and depth so tests train in seconds; ``size="full"`` has SD 1.5's
exact sizes (~1.1 B parameters, ~4 GB of RAM to build) for the SD-1.5-size tier (issue 11).

The config files are written with the hub's own key sets (not the longer ones today's
diffusers would write), so code reading these folders meets what a user's download holds.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from instructsd.errors import InstructSDError
from instructsd.files import atomic_dir

Layout = Literal["instruct-pix2pix", "sd15", "sdxl-instruct-pix2pix", "sdxl"]
SDXL_LAYOUTS = ("sdxl-instruct-pix2pix", "sdxl")
Size = Literal["tiny", "full"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49_408
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48,894: what is left after the byte symbols and the two specials
MODEL_MAX_LENGTH = 77

# The version strings the hub folders were written with; any older diffusers would do, they only
# have to differ from ours so that code comparing configs learns to ignore this field.
_HUB_VERSION = {"instruct-pix2pix": "0.12.0.dev0", "sd15": "0.6.0", "sdxl-instruct-pix2pix": "0.20.0.dev0",
                "sdxl": "0.19.0.dev0"}

# Both checkpoints train with SD's scaled-linear betas; the samplers they ship differ.
_BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000}
SCHEDULER_CONFIGS = {
    "instruct-pix2pix": {
        "_class_name": "EulerAncestralDiscreteScheduler", **_BETAS, "clip_sample": False, "prediction_type": "epsilon",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    },
    "sd15": {
        "_class_name": "PNDMScheduler", **_BETAS, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None, "clip_sample": False,
    },
}
_EULER = {
    "_class_name": "EulerDiscreteScheduler", **_BETAS, "clip_sample": False, "interpolation_type": "linear",
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
SCHEDULER_CONFIGS.update({"sdxl-instruct-pix2pix": _EULER, "sdxl": _EULER})
PIPELINES = {"instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline", "sd15": "StableDiffusionPipeline",
             "sdxl-instruct-pix2pix": "StableDiffusionXLInstructPix2PixPipeline", "sdxl": "StableDiffusionXLPipeline"}
LICENSES = {"instruct-pix2pix": "mit", "sd15": "creativeml-openrail-m", "sdxl-instruct-pix2pix": "openrail++",
            "sdxl": "openrail++"}
HUB_IDS = {"instruct-pix2pix": "timbrooks/instruct-pix2pix", "sd15": "runwayml/stable-diffusion-v1-5",
           "sdxl-instruct-pix2pix": "diffusers/sdxl-instructpix2pix-768", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}

# CLIP's image preprocessing, as the hub's feature_extractor/preprocessor_config.json holds it.
FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 1 / 255, "size": {"shortest_edge": 224},
}


# --- the CLIP BPE tokenizer --------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """CLIP's (and GPT-2's) printable stand-in for every byte, in CLIP's vocabulary order:
    the printable bytes as themselves first, then the rest mapped to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_bpe_merges() -> list[str]:
    """CLIP's 48,894 BPE merges, read from the copy the open-clip-torch wheel ships."""
    spec = importlib.util.find_spec("open_clip")  # located, not imported: open_clip imports torchvision
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise InstructSDError("CLIP's BPE merges (open_clip/bpe_simple_vocab_16e6.txt.gz) are missing; "
                              "install them with `pip install --no-deps open-clip-torch`")
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return lines[1 : 1 + CLIP_MERGES]  # line 0 is a version header; CLIP keeps the first 48,894 merges


def write_clip_tokenizer(folder: str | Path, pad_token: str = EOS) -> CLIPTokenizer:
    """Write CLIP-L's tokenizer folder (vocab.json, merges.txt, the two configs) as SD 1.5 ships it.

    ``pad_token="!"`` is SDXL's ``tokenizer_2`` (OpenCLIP pads with id 0, "!"); the vocabulary is the same."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_bpe_merges()
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = lambda text: {"content": text, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}  # noqa: E731
    specials = {"bos_token": special(BOS), "eos_token": special(EOS), "pad_token": pad_token, "unk_token": special(EOS)}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, **specials, "do_lower_case": True, "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH, "name_or_path": "openai/clip-vit-large-patch14",
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
    }, indent=2))
    # transformers 5's CLIPTokenizer(vocab_file=...) ignores the files it is given; from_pretrained reads them.
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MODEL_MAX_LENGTH)


# --- component configs, as the hub files hold them ---------------------------------------------


def unet_config(layout: Layout, size: Size) -> dict:
    if layout in SDXL_LAYOUTS:
        return sdxl_unet_config(layout, size)
    full = size == "full"
    widths = [320, 640, 1280, 1280] if full else [32, 64]
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": _HUB_VERSION[layout], "act_fn": "silu",
        "attention_head_dim": 8, "block_out_channels": widths, "center_input_sample": False, "cross_attention_dim": 768,
        # SD's pattern: cross-attention at every level but the coarsest.
        "down_block_types": ["CrossAttnDownBlock2D"] * (len(widths) - 1) + ["DownBlock2D"], "downsample_padding": 1,
        "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8 if layout == "instruct-pix2pix" else 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
        "sample_size": 64 if full else 8,  # latent pixels: 512 px (tiny: 64 px) through the factor-8 autoencoder
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(widths) - 1),
    }


def vae_config(layout: Layout, size: Size) -> dict:
    full = size == "full"
    if layout in SDXL_LAYOUTS:  # SD's autoencoder retrained: another scale, and fp16 overflows (force_upcast)
        return {**vae_config("sd15", size), "_diffusers_version": _HUB_VERSION[layout], "force_upcast": True,
                "sample_size": (768 if layout == "sdxl-instruct-pix2pix" else 1024) if full else 64,
                "scaling_factor": 0.13025}
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": _HUB_VERSION[layout], "act_fn": "silu",
        # 4 levels: factor 8. Tiny: 16 wide at full resolution, where the autoencoder spends its time.
        "block_out_channels": [128, 256, 512, 512] if full else [16, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "norm_num_groups": 32 if full else 16, "out_channels": 3, "sample_size": 512 if full else 64, "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_encoder_config(size: Size) -> dict:
    # The token ids 0/1/2 are the hub file's (CLIP-L predates correct ids); with eos_token_id 2
    # transformers pools at the highest id, which is CLIP's end-of-text token.
    return {
        "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0,
        "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": MODEL_MAX_LENGTH, "model_type": "clip_text_model", "num_attention_heads": 12,
        "num_hidden_layers": 12 if size == "full" else 1, "pad_token_id": 1, "projection_dim": 768,
        "torch_dtype": "float32", "transformers_version": "4.22.0.dev0", "vocab_size": CLIP_VOCAB_SIZE,
    }


# --- SDXL: two text encoders and the text_time addition embedding ------------------------------


def sdxl_text_encoder_configs(size: Size) -> tuple[dict, dict]:
    """CLIP-L (as in SD 1.5) and OpenCLIP ViT-bigG/14's text tower with its projection; tiny: 32 wide, 2 layers
    (two, so the penultimate hidden state SDXL reads is a transformer layer's output)."""
    first = {**text_encoder_config(size), "_name_or_path": "openai/clip-vit-large-patch14"}
    second = {**text_encoder_config(size), "_name_or_path": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
              "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280,
              "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
              "transformers_version": "4.32.0.dev0"}
    if size == "tiny":
        small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                 "projection_dim": 32}
        first, second = {**first, **small}, {**second, **small}
    return first, second


def sdxl_unet_config(layout: Layout, size: Size) -> dict:
    """SDXL's UNet: three levels (no attention at the finest), 2048-wide cross-attention (768 + 1280),
    and the ``text_time`` embedding of the pooled text (1280) and six size/crop numbers (256 each)."""
    full = size == "full"
    first, second = sdxl_text_encoder_configs(size)
    widths = [320, 640, 1280] if full else [32, 64]
    time_dim = 256 if full else 8
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": _HUB_VERSION[layout], "act_fn": "silu",
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": time_dim,
        "attention_head_dim": [5, 10, 20] if full else [2, 4], "block_out_channels": widths,
        "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
        "conv_out_kernel": 3, "cross_attention_dim": first["hidden_size"] + second["hidden_size"],
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(widths) - 1), "downsample_padding": 1,
        "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
        "freq_shift": 0, "in_channels": 8 if layout == "sdxl-instruct-pix2pix" else 4, "layers_per_block": 2,
        "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
        "only_cross_attention": False, "out_channels": 4,
        "projection_class_embeddings_input_dim": 6 * time_dim + second["projection_dim"],
        "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
        # latent pixels: 768 px (IP2P) or 1024 px (base) through the factor-8 autoencoder; tiny: 64 px
        "sample_size": (96 if layout == "sdxl-instruct-pix2pix" else 128) if full else 8,
        "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
        "time_embedding_type": "positional", "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10] if full else [1, 2],
        "up_block_types": ["CrossAttnUpBlock2D"] * (len(widths) - 1) + ["UpBlock2D"], "upcast_attention": None,
        "use_linear_projection": True,
    }


def model_index(layout: Layout) -> dict:
    if layout in SDXL_LAYOUTS:
        return dict(sorted({
            "_class_name": PIPELINES[layout], "_diffusers_version": _HUB_VERSION[layout],
            "force_zeros_for_empty_prompt": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        }.items()))
    index = {
        "_class_name": PIPELINES[layout], "_diffusers_version": _HUB_VERSION[layout],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", SCHEDULER_CONFIGS[layout]["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    if layout == "instruct-pix2pix":  # SD 1.5's index predates this key (diffusers 0.6); its default is true
        index["requires_safety_checker"] = True
    return dict(sorted(index.items()))


def _safety_checker(size: Size) -> StableDiffusionSafetyChecker:
    if size == "full":  # CLIP ViT-L/14, as in CompVis/stable-diffusion-safety-checker
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  patch_size=14, image_size=224, projection_dim=768)
        text = CLIPTextConfig(**{k: v for k, v in text_encoder_config("full").items() if not k.startswith("_")})
        projection = 768
    else:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  patch_size=32, image_size=224, projection_dim=32)
        text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              vocab_size=CLIP_VOCAB_SIZE, projection_dim=32)
        projection = 32
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                      projection_dim=projection))
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        # A concept is flagged when cosine(image, concept) - threshold (+ 0.01) > 0, and a flagged
        # image comes back black. Random embeddings would flag random images, so every threshold
        # is set above the largest possible cosine: the checker runs end to end, never fires.
        checker.concept_embeds_weights.fill_(2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    return checker


def _readme(layout: Layout, size: Size) -> str:
    return (f"---\nlicense: {LICENSES[layout]}\ntags:\n- stable-diffusion\n- "
            f"{'image-to-image' if 'instruct-pix2pix' in layout else 'text-to-image'}\n---\n"
            f"# Random-weight model in the layout of `{HUB_IDS[layout]}` ({size})\n\n"
            "Written by `instructsd model init-hub` for tests: the hub repository's files, config keys and component "
            "classes, random weights. The license field mirrors the hub card's, so license propagation is exercised.\n")


def write_hub_model(out: str | Path, layout: Layout, size: Size = "tiny", seed: int = 0, overwrite: bool = False) -> Path:
    """Write a random-weight diffusers folder laid out like ``timbrooks/instruct-pix2pix``
    (``layout="instruct-pix2pix"``), ``runwayml/stable-diffusion-v1-5`` (``"sd15"``),
    ``diffusers/sdxl-instructpix2pix-768`` (``"sdxl-instruct-pix2pix"``) or
    ``stabilityai/stable-diffusion-xl-base-1.0`` (``"sdxl"``)."""
    if layout not in PIPELINES:
        raise InstructSDError(f"unknown layout '{layout}'; use one of {', '.join(PIPELINES)}")
    if size not in ("tiny", "full"):
        raise InstructSDError(f"unknown size '{size}'; use tiny or full")
    torch.manual_seed(seed)
    sdxl = layout in SDXL_LAYOUTS
    text_cfgs = sdxl_text_encoder_configs(size) if sdxl else (text_encoder_config(size),)
    parts = {
        "unet": (UNet2DConditionModel.from_config(unet_config(layout, size)), unet_config(layout, size)),
        "vae": (AutoencoderKL.from_config(vae_config(layout, size)), vae_config(layout, size)),
    }
    for i, cfg in enumerate(text_cfgs):  # SDXL: text_encoder (CLIP-L), text_encoder_2 (bigG with projection)
        text_config = CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        model = CLIPTextModelWithProjection(text_config) if i else CLIPTextModel(text_config)
        parts["text_encoder_2" if i else "text_encoder"] = (model, cfg)
    if not sdxl:  # SDXL ships no safety checker
        parts["safety_checker"] = (_safety_checker(size), None)
    with atomic_dir(out, overwrite) as tmp:
        for name, (module, config) in parts.items():
            module.save_pretrained(tmp / name, safe_serialization=True)
            if config is not None:  # the hub's key set, not the longer one today's libraries write
                (tmp / name / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_clip_tokenizer(tmp / "tokenizer")
        if sdxl:
            write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
        (tmp / "scheduler").mkdir()
        scheduler = {**SCHEDULER_CONFIGS[layout], "_diffusers_version": _HUB_VERSION[layout]}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        if not sdxl:
            (tmp / "feature_extractor").mkdir()
            (tmp / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(FEATURE_EXTRACTOR, indent=2) + "\n")
        (tmp / "model_index.json").write_text(json.dumps(model_index(layout), indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(layout, size))
    return Path(out)
