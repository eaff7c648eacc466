"""Hub-faithful model folders (issue 11, items 1, 3, 10): the layout users download, final/ as
the base with new weights, and one clear line for architectures instructsd does not take."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import (
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import save_file

from conftest import photo
from instructsd.cli import run
from instructsd.config import load_config
from instructsd.models.hub_layout import SCHEDULER_CONFIGS, unet_config
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

LOAD_COMPLAINTS = ("missing", "not found", "disabled the safety checker", "were not initialized", "unexpected")


def _config(folder, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


@pytest.mark.parametrize("fixture, cls, channels, sampler", [
    ("ip2p_hub_model", StableDiffusionInstructPix2PixPipeline, 8, EulerAncestralDiscreteScheduler),
    ("sd15_hub_model", StableDiffusionPipeline, 4, PNDMScheduler),
])
def test_hub_folders_load_whole_in_the_stock_pipeline(fixture, cls, channels, sampler, request, capfd):
    folder = request.getfixturevalue(fixture)
    capfd.readouterr()
    pipe = cls.from_pretrained(folder)
    err = capfd.readouterr().err.lower()
    assert not [c for c in LOAD_COMPLAINTS if c in err], err
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker)
    assert pipe.feature_extractor.crop_size == {"height": 224, "width": 224}
    assert isinstance(pipe.scheduler, sampler) and pipe.scheduler.config.steps_offset == 1
    assert pipe.unet.config.in_channels == channels and pipe.unet.config.cross_attention_dim == 768
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == 0.18215
    assert pipe.text_encoder.config.hidden_size == 768 and pipe.text_encoder.config.hidden_act == "quick_gelu"
    # CLIP's real BPE: 49,408 entries, ids as CLIP gives them, padded to 77 with <|endoftext|>.
    assert len(pipe.tokenizer) == 49_408
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = pipe.tokenizer("a cat", padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    # The files hold the hub's key sets, not the longer ones today's diffusers writes.
    index = _config(folder, "model_index.json")
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index.get("requires_safety_checker", True) is True
    assert set(_config(folder, "unet/config.json")) == set(unet_config("sd15", "full"))
    layout = "instruct-pix2pix" if channels == 8 else "sd15"
    assert set(_config(folder, "scheduler/scheduler_config.json")) == set(SCHEDULER_CONFIGS[layout]) | {"_diffusers_version"}


def test_the_safety_checker_runs_and_never_blackens_random_outputs(ip2p_hub_model):
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p_hub_model)
    out = pipe("make it red", image=photo(0, (32, 32)), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.nsfw_content_detected == [False]  # the checker ran (None when it is absent)
    assert max(out.images[0].getextrema())[1] > 0


def test_init_hub_cli_writes_the_layout(tmp_path):
    assert run(["model", "init-hub", str(tmp_path / "m"), "--layout", "sd15"]) == 0
    assert _config(tmp_path / "m", "model_index.json")["_class_name"] == "StableDiffusionPipeline"
    assert run(["model", "init-hub", str(tmp_path / "m"), "--layout", "sd15"]) == 1  # never overwritten silently
    assert run(["model", "init-hub", str(tmp_path / "x"), "--layout", "sd3"]) == 1


# --- final/ is the base with new weights (item 3) ----------------------------------------------


@pytest.fixture(scope="module")
def dataset(pairs_32px) -> Path:
    return pairs_32px


def _train(base: str, data: Path, out: Path, *extra: str):
    return train(load_config(TrainConfig, "tiny-cpu", [
        f"base_model={base}", f"dataset={data}", f"output_dir={out}", "resolution=32", "train_batch_size=2",
        "max_train_steps=1", "lr_warmup_steps=0", *extra]), progress=False)


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---", 2)
    return yaml.safe_load(front), body


def test_final_keeps_the_bases_sampler_safety_checker_and_license(ip2p_hub_model, dataset, tmp_path, capfd):
    final = _train(ip2p_hub_model, dataset, tmp_path / "run").final_dir
    base_sched, saved_sched = (_config(f, "scheduler/scheduler_config.json") for f in (ip2p_hub_model, final))
    base_sched.pop("_diffusers_version"), saved_sched.pop("_diffusers_version")
    assert saved_sched == base_sched
    capfd.readouterr()
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(final)
    assert not [c for c in LOAD_COMPLAINTS if c in capfd.readouterr().err.lower()]
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker) and pipe.feature_extractor is not None
    index = _config(final, "model_index.json")
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"] and index["requires_safety_checker"]
    meta, body = _card(final)
    assert meta["base_model"] == ip2p_hub_model and meta["datasets"] == [str(dataset)]
    assert meta["license"] == "mit"  # read from the base's card
    assert {"instructsd", "instruct-pix2pix", "image-to-image", "stable-diffusion"} <= set(meta["tags"])
    assert "lora" not in meta["tags"] and "dropped" not in body


def test_safety_checker_is_dropped_only_on_request_and_the_card_says_so(ip2p_hub_model, dataset, tmp_path):
    final = _train(ip2p_hub_model, dataset, tmp_path / "run", "drop_safety_checker=true").final_dir
    assert not (final / "safety_checker").exists() and not (final / "feature_extractor").exists()
    index = _config(final, "model_index.json")
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(final).safety_checker is None
    assert "safety checker: dropped on request" in _card(final)[1]


def test_a_four_channel_start_becomes_an_instruct_pix2pix_pipeline_with_its_own_sampler(sd15_hub_model, dataset, tmp_path):
    result = _train(sd15_hub_model, dataset, tmp_path / "run", "lora_rank=2")
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(result.final_dir)
    assert result.expanded_conv_in and pipe.unet.config.in_channels == 8
    assert isinstance(pipe.scheduler, PNDMScheduler) and isinstance(pipe.safety_checker, StableDiffusionSafetyChecker)
    meta, _ = _card(result.final_dir)
    assert meta["license"] == "creativeml-openrail-m" and "lora" in meta["tags"]
    # `model merge-lora` saves the same way.
    assert run(["model", "merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    assert _config(tmp_path / "merged", "scheduler/scheduler_config.json") == \
        _config(result.final_dir, "scheduler/scheduler_config.json")
    assert (tmp_path / "merged" / "safety_checker").is_dir() and "lora" in _card(tmp_path / "merged")[0]["tags"]


# --- one clear line for what instructsd does not take (item 10) --------------------------------


def _linked(base: str, folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """A model folder sharing ``base``'s component folders by symlink (cheap to make many)."""
    folder.mkdir()
    for part in Path(base).iterdir():
        if part.name not in skip:
            os.symlink(part.resolve(), folder / part.name)
    return folder


@pytest.fixture(scope="module")
def unsupported(ip2p_hub_model, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("unsupported")
    # An SDXL refiner: one text encoder (the second), which instructsd does not train from (issue 14).
    refiner = _linked(ip2p_hub_model, root / "refiner", skip=("model_index.json", "text_encoder", "tokenizer"))
    os.symlink((Path(ip2p_hub_model) / "text_encoder").resolve(), refiner / "text_encoder_2")
    os.symlink((Path(ip2p_hub_model) / "tokenizer").resolve(), refiner / "tokenizer_2")
    index = _config(ip2p_hub_model, "model_index.json")
    (refiner / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline",
                                                          "text_encoder": [None, None], "tokenizer": [None, None],
                                                          "text_encoder_2": index["text_encoder"],
                                                          "tokenizer_2": index["tokenizer"]}))
    unet_weights = Path(ip2p_hub_model) / "unet" / "diffusion_pytorch_model.safetensors"
    single = root / "sd15-pruned.safetensors"
    os.symlink(unet_weights.resolve(), single)
    loose = root / "downloads"
    loose.mkdir()
    os.symlink(unet_weights.resolve(), loose / "model.ckpt")
    pickled = _linked(ip2p_hub_model, root / "pickled", skip=("unet",))
    (pickled / "unet").mkdir()
    (pickled / "unet" / "config.json").write_text((Path(ip2p_hub_model) / "unet" / "config.json").read_text())
    torch.save({"conv_in.weight": torch.zeros(1)}, pickled / "unet" / "diffusion_pytorch_model.bin")
    return {"refiner": (refiner, "SDXL refiner"), "single": (single, "from_single_file"),
            "loose": (loose, "from_single_file"), "pickled": (pickled, "only pickled .bin weights")}


@pytest.mark.parametrize("kind", ["refiner", "single", "loose", "pickled"])
@pytest.mark.parametrize("command", ["train", "edit"])
def test_unsupported_models_fail_with_one_line(kind, command, unsupported, dataset, tmp_path, capsys):
    model, message = unsupported[kind]
    if command == "train":
        argv = ["train", "tiny-cpu", f"base_model={model}", f"dataset={dataset}", f"output_dir={tmp_path / 'run'}"]
    else:
        Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
        argv = ["edit", "--model", str(model), "--image", str(tmp_path / "in.png"), "--instruction", "x",
                "--out", str(tmp_path / "out.png")]
    capsys.readouterr()
    assert run(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
