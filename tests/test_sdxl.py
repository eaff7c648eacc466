"""SDXL on the same code path (issue 14): hub-faithful fixtures, the backbone's conditioning against
the stock pipeline's, per-sample size/crop time ids, and tiny SDXL runs (full, LoRA, cached, bf16)
that resume, save a stock folder and edit at the input's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLInstructPix2PixPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.config import load_config
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.models.backbone import SDXLBackbone, backbone_of
from instructsd.models.hub_layout import sdxl_unet_config, write_hub_model
from instructsd.models.loading import check_supported, load_components
from instructsd.train.batches import PairDataset
from instructsd.train.config import TrainConfig
from instructsd.train.data import mirror_crop, paired_crop
from instructsd.train.loop import train
from instructsd.train.objective import DropoutProbs, instruct_pix2pix_loss

LOAD_COMPLAINTS = ("missing", "not found", "were not initialized", "unexpected")


@pytest.fixture(scope="module")
def sdxl_ip2p(tmp_path_factory) -> str:
    """Laid out like diffusers/sdxl-instructpix2pix-768 (8-channel UNet), tiny widths."""
    return str(write_hub_model(tmp_path_factory.mktemp("models") / "sdxl-ip2p", "sdxl-instruct-pix2pix"))


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory) -> str:
    """Laid out like stabilityai/stable-diffusion-xl-base-1.0 (4-channel UNet), tiny widths."""
    return str(write_hub_model(tmp_path_factory.mktemp("models") / "sdxl-base", "sdxl"))


@pytest.fixture(scope="module")
def dataset(pairs_32px) -> Path:
    return pairs_32px


def _cfg(model, data, out, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=32", "train_batch_size=2",
        "lr_warmup_steps=0", "log_every=1", *extra])


def _config(folder, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


# --- the fixtures are what users download -------------------------------------------------------------


@pytest.mark.parametrize("layout, cls, channels", [("sdxl-instruct-pix2pix", StableDiffusionXLInstructPix2PixPipeline, 8),
                                                   ("sdxl", StableDiffusionXLPipeline, 4)])
def test_sdxl_layouts_load_whole_in_the_stock_pipelines(layout, cls, channels, sdxl_ip2p, sdxl_base, capfd):
    folder = sdxl_ip2p if channels == 8 else sdxl_base
    capfd.readouterr()
    pipe = cls.from_pretrained(folder)
    assert not [c for c in LOAD_COMPLAINTS if c in capfd.readouterr().err.lower()]
    index = _config(folder, "model_index.json")
    assert index["_class_name"] == cls.__name__ and index["force_zeros_for_empty_prompt"] is True
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["tokenizer_2"] == ["transformers", "CLIPTokenizer"] and "safety_checker" not in index
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.unet.config.in_channels == channels and pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"
    assert set(_config(folder, "unet/config.json")) == set(sdxl_unet_config(layout, "full"))
    # The full-size config is SDXL's: 2048-wide cross-attention, 6 × 256 time features + 1280 pooled.
    full = sdxl_unet_config(layout, "full")
    assert full["cross_attention_dim"] == 2048 and full["projection_class_embeddings_input_dim"] == 2816


def test_refiners_and_transformer_models_are_refused_in_one_line():
    with pytest.raises(InstructSDError, match="SDXL refiner"):
        check_supported({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
                         "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "unet": ["diffusers", "x"]}, "r")
    with pytest.raises(InstructSDError, match="UNet Stable Diffusion models only"):
        check_supported({"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "x"]}, "sd3")


# --- the backbone against the stock pipeline ---------------------------------------------------------


@pytest.mark.parametrize("force_zeros", [True, False])
def test_backbone_encodes_prompts_and_the_null_prompt_as_the_pipeline_does(sdxl_ip2p, force_zeros):
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(sdxl_ip2p, force_zeros_for_empty_prompt=force_zeros)
    backbone = backbone_of(pipe)
    assert isinstance(backbone, SDXLBackbone) and backbone.force_zeros_for_empty_prompt is force_zeros
    prompts = ["make it snow", "", "turn the sky into a sunset at the beach"]
    # Without force_zeros the stock encode_prompt needs the empty negative prompts spelled out for a list of prompts.
    empty = None if force_zeros else [""] * len(prompts)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True,
                                                                   negative_prompt=empty)
    text = backbone.encode(prompts)
    assert text.embeds.shape == (3, 77, 64) and text.pooled.shape == (3, 32)  # 32 + 32 wide; bigG's projection
    assert torch.equal(text.embeds, embeds) and torch.equal(text.pooled, pooled)
    null = backbone.null()  # the pipeline's unconditional branch: zeros with force_zeros_for_empty_prompt, else ""
    # (allclose: the stock call encodes the three empty prompts as a batch of 3, the backbone as a batch of 1)
    assert torch.allclose(null.embeds.expand_as(negative), negative, atol=1e-6)
    assert torch.allclose(null.pooled.expand_as(negative_pooled), negative_pooled, atol=1e-6)
    assert bool(null.embeds.abs().sum() == 0) is force_zeros
    # The components instructsd loads give the same conditioning.
    parts = load_components(sdxl_ip2p)
    assert parts.is_sdxl and torch.equal(backbone_of(parts).encode(prompts).embeds, embeds)


def test_time_ids_follow_each_samples_size_and_crop(sdxl_ip2p):
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(sdxl_ip2p)
    backbone = backbone_of(pipe)
    # An uncropped sample: the pipeline's (H, W, 0, 0, H, W), what it feeds at inference.
    square = photo(0, (32, 32))
    *_, crops = paired_crop(square, square, 32, np.random.default_rng(0), flip=False)
    stock = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(backbone.time_ids(crops[None]), stock)

    # A wide photo: its real size and where each crop was taken.
    wide = photo(1, (80, 48))
    rows = [paired_crop(wide, wide, 32, np.random.default_rng(seed), flip=False)[2] for seed in range(6)]
    assert all(r[:2].tolist() == [48, 80] and r[4:].tolist() == [32, 32] for r in rows)
    assert len({tuple(r.tolist()) for r in rows}) > 1  # different crops, different time ids
    # Flipped: the left edge is measured in the flipped image (as if flipped before cropping).
    src, _, plain = paired_crop(wide, wide, 32, np.random.default_rng(3), flip=False, flipped=False)
    flipped_src, _, flipped = paired_crop(wide, wide, 32, np.random.default_rng(3), flip=False, flipped=True)
    assert torch.equal(flipped, mirror_crop(plain)) and torch.equal(flipped_src, src.flip(-1))
    resized = wide.resize((53, 32), Image.BICUBIC).transpose(Image.FLIP_LEFT_RIGHT)  # resize_short_side's 53 × 32
    left = int(flipped[3])
    expected = np.asarray(resized.crop((left, 0, left + 32, 32)), np.float32) / 127.5 - 1
    assert np.allclose(flipped_src.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_the_batch_carries_each_samples_crop(dataset):
    from instructsd.data.load import load_split

    rows = load_split(str(dataset), "train", ["input_image", "edited_image", "edit_prompt"])
    data = PairDataset(rows, size=24, flip=True, seed=0, input_column="input_image", edited_column="edited_image",
                       prompt_column="edit_prompt")
    sample = data[0]
    height, width = rows[0]["input_image"].height, rows[0]["input_image"].width
    assert sample["crops"][:2].tolist() == [height, width] and sample["crops"][4:].tolist() == [24, 24]


def test_the_dropped_text_drops_the_pooled_text_too_and_time_ids_reach_the_unet(sdxl_ip2p):
    unet = UNet2DConditionModel.from_pretrained(sdxl_ip2p, subfolder="unet")
    seen = []
    unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    scheduler = load_components(sdxl_ip2p).scheduler
    latents, image = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    text, pooled = torch.randn(2, 77, 64), torch.randn(2, 32)
    crops = torch.tensor([[48, 80, 0, 5, 32, 32], [32, 32, 0, 0, 32, 32]])
    for probs, dropped in ((DropoutProbs(text=1.0, image=0.0, both=0.0), True), (DropoutProbs(text=0, image=0, both=0), False)):
        instruct_pix2pix_loss(unet, scheduler, latents, image, text, torch.zeros(1, 77, 64), probs,
                              torch.Generator().manual_seed(0), pooled=pooled, null_pooled=torch.zeros(1, 32),
                              time_ids=crops.float())
        added = seen[-1]["added_cond_kwargs"]
        assert torch.equal(added["time_ids"], crops.float())  # never dropped
        assert bool(added["text_embeds"].abs().sum() == 0) is dropped
        assert bool(seen[-1]["encoder_hidden_states"].abs().sum() == 0) is dropped


def test_an_fp16_run_keeps_the_sdxl_vae_in_fp32(sdxl_ip2p, ip2p_hub_model):
    sdxl, sd = load_components(sdxl_ip2p), load_components(ip2p_hub_model)
    sdxl_dtype, sd_dtype = backbone_of(sdxl).vae_dtype, backbone_of(sd).vae_dtype
    assert sdxl_dtype(sdxl.vae, torch.float16) == torch.float32  # force_upcast: fp16 overflows
    assert sdxl_dtype(sdxl.vae, torch.bfloat16) == torch.bfloat16 and sd_dtype(sd.vae, torch.float16) == torch.float16
    sdxl.vae.register_to_config(force_upcast=False)  # a fixed fp16 VAE (e.g. madebyollin/sdxl-vae-fp16-fix)
    assert sdxl_dtype(sdxl.vae, torch.float16) == torch.float16


# --- tiny SDXL runs ----------------------------------------------------------------------------------


def test_sdxl_run_resumes_saves_a_stock_folder_and_edits_at_the_inputs_size(sdxl_ip2p, dataset, tmp_path, capfd):
    common = ("mixed_precision=bf16", "max_train_steps=4", "checkpoint_every=2", "validation_every=2",
              "num_validation_images=1", "validation.num_inference_steps=1")
    full = train(_cfg(sdxl_ip2p, dataset, tmp_path / "full", *common), progress=False)
    part = train(_cfg(sdxl_ip2p, dataset, tmp_path / "part", *common), progress=False, stop_at=2)
    resumed = train(_cfg(sdxl_ip2p, dataset, tmp_path / "part", *common, "resume=latest"), progress=False)
    assert part.losses == full.losses[:2] and resumed.losses == full.losses  # bf16 autocast, exact on the CPU
    assert all(np.isfinite(loss) for _, loss in full.losses) and not full.expanded_conv_in
    assert (tmp_path / "full" / "validation" / "step-4.png").is_file()

    # final/ is a stock SDXL InstructPix2Pix folder with the base's sampler: one line loads it.
    capfd.readouterr()
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(full.final_dir)
    assert not [c for c in LOAD_COMPLAINTS if c in capfd.readouterr().err.lower()]
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.unet.config.in_channels == 8
    assert _config(full.final_dir, "model_index.json")["force_zeros_for_empty_prompt"] is True
    base_unet = UNet2DConditionModel.from_pretrained(sdxl_ip2p, subfolder="unet")
    assert not torch.equal(pipe.unet.conv_in.weight, base_unet.conv_in.weight)  # trained

    # The edit keeps a non-square input's size (the stock pipeline alone would return 64 × 64).
    pipe = load_pipeline(full.final_dir, device="cpu")
    out = edit_images(pipe, [photo(5, (80, 48))], ["make it snow"], EditSettings(num_inference_steps=2))[0]
    assert out.size == (80, 48) and np.asarray(out).std() > 0
    Image.new("RGB", (80, 48), (120, 30, 200)).save(tmp_path / "in.png")
    assert run(["edit", "--model", str(full.final_dir), "--image", str(tmp_path / "in.png"), "--instruction", "x",
                "--steps", "2", "--out", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (80, 48)


def test_sdxl_lora_loads_with_load_lora_weights_like_final(sdxl_ip2p, dataset, tmp_path):
    result = train(_cfg(sdxl_ip2p, dataset, tmp_path / "run", "lora_rank=4", "lora_alpha=8", "max_train_steps=2",
                        "learning_rate=1e-2"), progress=False)
    final = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(result.final_dir)
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(sdxl_ip2p)
    before = _forward(pipe.unet)
    pipe.load_lora_weights(result.lora_dir)  # stock diffusers, one line
    assert (before - _forward(final.unet)).abs().max() > 1e-4  # the adapters changed the model
    assert torch.allclose(_forward(pipe.unet), _forward(final.unet), atol=1e-5)
    # `model merge-lora` builds the same SDXL folder.
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    merged = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_forward(merged.unet), _forward(final.unet), atol=1e-5)


def test_a_4_channel_sdxl_base_gets_conv_in_expanded_and_a_cached_run_matches(sdxl_base, dataset, tmp_path):
    plain = train(_cfg(sdxl_base, dataset, tmp_path / "plain", "max_train_steps=2"), progress=False)
    cached = train(_cfg(sdxl_base, dataset, tmp_path / "cached", "max_train_steps=2", "cache_latents=true"), progress=False)
    assert plain.expanded_conv_in and cached.expanded_conv_in
    # The cache holds both encoders' embeddings, the pooled text and each row's crops, and trains on the same numbers.
    assert np.allclose([v for _, v in plain.losses], [v for _, v in cached.losses], rtol=1e-4)
    from datasets import load_from_disk

    text = load_from_disk(str(tmp_path / "cached" / "cache" / "text"))
    assert {"embedding", "pooled"} <= set(text.column_names) and len(text[0]["pooled"]) == 32
    assert "crops_1" in load_from_disk(str(tmp_path / "cached" / "cache" / "latents")).column_names
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(plain.final_dir)
    assert pipe.unet.config.in_channels == 8 and pipe.unet.conv_in.weight.shape[1] == 8


def _forward(unet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4, 4, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    added = {"text_embeds": torch.randn(2, 32, generator=gen), "time_ids": torch.tensor([[32., 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return unet.eval()(x, torch.tensor([10, 700]), encoder_hidden_states=text, added_cond_kwargs=added).sample
