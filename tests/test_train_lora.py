"""LoRA fine-tuning: an adapter folder that stock diffusers and peft load, conv_in trained only where needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

from instructsd.cli import run
from instructsd.config import load_config
from instructsd.errors import InstructSDError
from instructsd.models.lora import load_adapter
from instructsd.models.surgery import ensure_instruct_unet
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

from conftest import photo

# alpha != rank: a loader that drops lora_alpha (diffusers assumes alpha = rank) scales the adapters by 1, not 2.
LORA = ("lora_rank=4", "lora_alpha=8")


@pytest.fixture(scope="module")
def dataset(pairs_32px) -> Path:
    return pairs_32px


def _cfg(model: str, data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=32", "train_batch_size=2",
        "lr_scheduler=constant", "lr_warmup_steps=0", "learning_rate=1e-2", "log_every=1", *LORA, *extra])


@pytest.fixture(scope="module")
def pure_run(ip2p_hub_model, dataset, tmp_path_factory):
    """A LoRA run from the 8-channel base: adapters only, conv_in frozen."""
    cfg = _cfg(ip2p_hub_model, dataset, tmp_path_factory.mktemp("lora") / "run", "max_train_steps=4", "checkpoint_every=2")
    return train(cfg, progress=False)


def _forward(unet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet.eval()(x, torch.tensor([10, 700]), encoder_hidden_states=text).sample


def _edit(pipe) -> torch.Tensor:
    images = pipe("make it blue", image=photo(7, (32, 32)), num_inference_steps=3, guidance_scale=3.0,
                  image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="np").images
    return torch.from_numpy(images)


def test_adapter_from_an_8_channel_base_loads_in_stock_diffusers_and_peft_like_final(pure_run, ip2p_hub_model, dataset):
    lora = pure_run.lora_dir
    assert sorted(p.name for p in lora.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "instructsd_lora.json", "pytorch_lora_weights.safetensors"]
    config = LoraConfig.from_pretrained(str(lora))  # a real peft config
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"to_q", "to_k", "to_v", "to_out.0"})
    assert json.loads((lora / "instructsd_lora.json").read_text()) == {
        "base_model": ip2p_hub_model, "expanded_conv_in": False, "unet_in_channels": 8, "train_conv_in": False,
        "dataset": str(dataset), "prediction_type": None, "drop_safety_checker": False}

    # Stock diffusers, one line; final/ keeps the base's sampler, so this compares weights only.
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_hub_model)
    base_unet, base_image = _forward(pipe.unet), _edit(pipe)
    pipe.load_lora_weights(lora)
    final = StableDiffusionInstructPix2PixPipeline.from_pretrained(pure_run.final_dir)
    assert type(final.scheduler) is type(pipe.scheduler)
    final_unet, final_image = _forward(final.unet), _edit(final)
    assert (_edit(pipe) - final_image).abs().max() <= 0.02
    assert (base_image - final_image).abs().max() > 0.02  # the adapter changed the edit
    # Exact at the UNet: alpha/rank = 2 survived (with scale 1 the adapters' effect would be halved).
    assert (base_unet - final_unet).abs().max() > 1e-3
    assert torch.allclose(_forward(pipe.unet), final_unet, atol=1e-5)
    frozen = "conv_in.weight"  # pure LoRA: the base's conv_in, untouched
    assert torch.equal(final.unet.state_dict()[frozen], UNet2DConditionModel.from_pretrained(
        ip2p_hub_model, subfolder="unet").state_dict()[frozen])

    # peft, one line, onto the base UNet.
    peft_unet = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(ip2p_hub_model, subfolder="unet"), str(lora))
    assert torch.allclose(_forward(peft_unet), final_unet, atol=1e-5)


def test_lora_resume_continues_with_exactly_the_uninterrupted_losses(pure_run, ip2p_hub_model, dataset, tmp_path):
    common = ("max_train_steps=4", "checkpoint_every=2")
    part = train(_cfg(ip2p_hub_model, dataset, tmp_path / "part", *common), progress=False, stop_at=2)
    saved = load_file(str(tmp_path / "part" / "checkpoints" / "step-0000002" / "unet.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # the trainable tensors: adapters only, conv_in is frozen
    resumed = train(_cfg(ip2p_hub_model, dataset, tmp_path / "part", *common, "resume=latest"), progress=False)
    assert part.losses == pure_run.losses[:2] and resumed.losses == pure_run.losses
    a, b = (load_file(str(r / "adapter_model.safetensors")) for r in (pure_run.lora_dir, resumed.lora_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_from_a_4_channel_start_trains_and_ships_conv_in(sd15_hub_model, dataset, tmp_path):
    # Started from a 4-channel SD model: conv_in is expanded, then trained fully beside the adapters.
    result = train(_cfg(sd15_hub_model, dataset, tmp_path / "run", "max_train_steps=2", "checkpoint_every=1"), progress=False)
    lora = result.lora_dir
    assert "conv_in.weight" in load_file(str(tmp_path / "run" / "checkpoints" / "step-0000002" / "unet.safetensors"))
    adapters = load_file(str(lora / "adapter_model.safetensors"))
    assert any(k.endswith("to_q.lora_B.weight") and v.abs().sum() > 0 for k, v in adapters.items())  # adapters trained
    base_unet, _ = ensure_instruct_unet(UNet2DConditionModel.from_pretrained(sd15_hub_model, subfolder="unet"))
    conv = load_file(str(lora / "conv_in.safetensors"))
    assert not torch.equal(conv["weight"], base_unet.conv_in.weight)  # conv_in trained, and what was trained is saved
    assert torch.count_nonzero(conv["weight"][:, 4:]) > 0  # the new input-image channels learned something
    final = StableDiffusionInstructPix2PixPipeline.from_pretrained(result.final_dir, safety_checker=None)
    final_unet = _forward(final.unet)

    # Stock diffusers on the 4-channel base: the adapters load, conv_in goes in by hand (docs/training.md).
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(sd15_hub_model, safety_checker=None)
    pipe.load_lora_weights(lora)
    conv_in = load_file(str(lora / "conv_in.safetensors"))
    pipe.unet.conv_in = torch.nn.Conv2d(8, conv_in["weight"].shape[0], kernel_size=3, padding=1)
    pipe.unet.conv_in.load_state_dict(conv_in)
    pipe.unet.register_to_config(in_channels=8)
    assert torch.allclose(_forward(pipe.unet), final_unet, atol=1e-5)
    _edit(pipe)  # the pipeline accepts the 8-channel UNet

    # instructsd's own loader, and `model merge-lora`, give the same model.
    assert torch.allclose(_forward(load_adapter(base_unet, lora)), final_unet, atol=1e-5)
    merged_dir = tmp_path / "merged"
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(merged_dir)]) == 0
    merged = StableDiffusionInstructPix2PixPipeline.from_pretrained(merged_dir, safety_checker=None)
    assert merged.unet.config.in_channels == 8
    assert torch.allclose(_forward(merged.unet), final_unet, atol=1e-5)

    # A folder written before the portable format (unprefixed peft keys, instructsd's own adapter_config.json).
    old = tmp_path / "old-lora"
    old.mkdir()
    shutil.copy(lora / "conv_in.safetensors", old)
    save_file({k.removeprefix("base_model.model."): v for k, v in adapters.items()}, str(old / "adapter_model.safetensors"))
    (old / "adapter_config.json").write_text(json.dumps({
        "rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"], "base_model": sd15_hub_model,
        "expanded_conv_in": True, "unet_in_channels": 8}))
    base_unet, _ = ensure_instruct_unet(UNet2DConditionModel.from_pretrained(sd15_hub_model, subfolder="unet"))
    assert torch.allclose(_forward(load_adapter(base_unet, old)), final_unet, atol=1e-5)


def test_frozen_conv_in_is_refused_where_it_would_never_see_the_input_image(sd15_hub_model, dataset, tmp_path):
    with pytest.raises(InstructSDError, match="lora_train_conv_in"):
        train(_cfg(sd15_hub_model, dataset, tmp_path / "run", "max_train_steps=1", "lora_train_conv_in=false"), progress=False)


def test_merge_lora_refuses_a_run_without_adapters(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 1
    assert "lora_rank" in capsys.readouterr().err
