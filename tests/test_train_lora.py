"""LoRA fine-tuning: adapters plus a fully trained conv_in, saved, reloaded and merged into stock diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from instructsd.cli import run
from instructsd.config import load_config
from instructsd.data.build import build_dataset
from instructsd.models.lora import load_adapter
from instructsd.models.surgery import ensure_instruct_unet
from instructsd.train.config import TrainConfig
from instructsd.train.recipe import train

from conftest import photo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-data") / "pairs"
    build_dataset([(f"p{i}", photo(i, (40, 32))) for i in range(3)], out, size=32, crops_per_image=1, val_fraction=0.34,
                  progress=False)
    return out


def _forward(unet: UNet2DConditionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet.eval()(x, torch.tensor([10, 700]), encoder_hidden_states=text).sample


def test_lora_run_saves_adapters_and_conv_in_and_merges_into_stock_diffusers(sd15_hub_model, dataset, tmp_path):
    # Started from a 4-channel SD model: conv_in is expanded, then trained fully beside the adapters.
    cfg = load_config(TrainConfig, "tiny-cpu", [
        f"base_model={sd15_hub_model}", f"dataset={dataset}", f"output_dir={tmp_path / 'run'}", "resolution=32",
        "train_batch_size=2", "max_train_steps=2", "lr_scheduler=constant", "lr_warmup_steps=0", "learning_rate=1e-2",
        "lora_rank=4", "lora_alpha=8"])
    result = train(cfg, progress=False)
    adapters = load_file(str(result.lora_dir / "adapter_model.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    assert any(k.endswith("to_q.lora_B.weight") and v.abs().sum() > 0 for k, v in adapters.items())  # adapters trained
    base_unet, _ = ensure_instruct_unet(UNet2DConditionModel.from_pretrained(sd15_hub_model, subfolder="unet"))
    conv = load_file(str(result.lora_dir / "conv_in.safetensors"))
    assert not torch.equal(conv["weight"], base_unet.conv_in.weight)  # conv_in trained, and what was trained is saved
    assert torch.count_nonzero(conv["weight"][:, 4:]) > 0  # the new input-image channels learned something

    # Reloaded adapters = the merged model the run saved = the merged model of `model merge-lora`.
    with_adapter = _forward(load_adapter(base_unet, result.lora_dir))
    merged_dir = tmp_path / "merged"
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(merged_dir)]) == 0
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(merged_dir)
    assert pipe.unet.config.in_channels == 8
    assert torch.allclose(_forward(pipe.unet), with_adapter, atol=1e-5)
    final = StableDiffusionInstructPix2PixPipeline.from_pretrained(result.final_dir)
    assert torch.allclose(_forward(final.unet), with_adapter, atol=1e-5)
    frozen = "down_blocks.0.resnets.0.conv1.weight"  # not adapted: identical to the base
    assert torch.equal(pipe.unet.state_dict()[frozen], base_unet.state_dict()[frozen])


def test_merge_lora_refuses_a_run_without_adapters(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 1
    assert "lora_rank" in capsys.readouterr().err
