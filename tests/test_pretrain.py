"""The tiny instruction-following base: the recipe that makes it, the shipped weights, the quickstart."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

from instructsd.cli import run
from instructsd.config import load_config
from instructsd.errors import InstructSDError
from instructsd.models.loading import TINY_BASE_ALIAS, tiny_base_path, tiny_base_record
from instructsd.recipes.pretrain_tiny import PretrainConfig, check_subset, pretrain_tiny, recipe_from_record, train_config
from instructsd.recipes.quickstart import scratch_start
from instructsd.train.config import TrainConfig

SMALL = PretrainConfig(
    tasks=("denoise", "lowlight"), size=32, crops_per_image=2, unet_channels=(16, 32), vae_channels=(16,),
    text_dim=32, vae_steps=5, text_fit_steps=5, train_steps=3, eval_per_task=2,
    train={"prediction_type": "sample", "learning_rate": 1e-3, "train_batch_size": 4, "gradient_accumulation_steps": 1},
    settings=[{"scheduler": "ddim", "num_inference_steps": 2, "image_guidance_scale": 1.5, "guidance_scale": 3.0},
              {"scheduler": "euler", "num_inference_steps": 1, "image_guidance_scale": 1.0, "guidance_scale": 1.0}],
)


def test_pretrain_tiny_writes_a_stock_pipeline_with_card_and_metrics(tmp_path):
    model = pretrain_tiny(tmp_path / "pre", SMALL, progress=False, command="instructsd model pretrain-tiny pre")

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model)
    assert pipe.unet.config.in_channels == 8
    assert pipe.scheduler.config.prediction_type == "sample"  # the trained target travels with the model
    # One GroupNorm group in the autoencoder and the UNet: both keep each crop's absolute colour.
    assert pipe.vae.config.norm_num_groups == 1 and pipe.unet.config.norm_num_groups == 1
    # 'trailing' spacing travels with the base: a one-step edit starts at the last training step, not t=1.
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [999]
    record = json.loads((model / "pretrain.json").read_text())
    assert set(record["metrics"]) == {"denoise", "lowlight"}
    for cell in record["metrics"].values():
        assert set(cell) == {"model", "model_held_out", "identity"}
        assert cell["model"]["n"] == 2
    assert record["check"]["metrics"].keys() == record["metrics"].keys()
    # The card's settings are the best candidate on the check subset.
    best = max(record["settings_search"], key=lambda c: c["mean_psnr"])
    assert record["settings"] == best["settings"] == record["check"]["settings"]
    # Validation photos are never trained on: the card names them and they are the builder's split.
    assert record["validation_photos"] and all(p in (model / "README.md").read_text() for p in record["validation_photos"])
    assert "instructsd model pretrain-tiny pre" in (model / "README.md").read_text()
    # The text encoder was fitted to the training wordings' edits (denoise, lowlight: 2 classes) and says so.
    fit = record["autoencoder"]["text_encoder_fit"]
    assert fit["steps"] == 5 and fit["classes"] == 2
    assert "fitted 5 steps to tell the 2 training edits apart" in (model / "README.md").read_text()

    # Another recipe in the same folder is refused rather than mixed with the first.
    with pytest.raises(InstructSDError, match="other settings"):
        pretrain_tiny(tmp_path / "pre", replace(SMALL, seed=1), progress=False)


def test_shipped_base_loads_in_stock_diffusers_and_reproduces_its_card(tmp_path):
    base = tiny_base_path()
    size = sum(f.stat().st_size for f in base.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"shipped base is {size / 2**20:.1f} MB; the budget is 20 MB"
    record = tiny_base_record()
    cfg = recipe_from_record(record["config"])

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    again = check_subset(cfg, pipe, tmp_path / "check-data", record["settings"])["metrics"]
    recorded = record["check"]["metrics"]
    assert again.keys() == recorded.keys()
    for task, cell in recorded.items():
        assert again[task]["identity"]["psnr"] == pytest.approx(cell["identity"]["psnr"], abs=1e-6)  # same data
        for method in ("model", "model_held_out"):
            assert again[task][method]["psnr"] == pytest.approx(cell[method]["psnr"], abs=0.3), (task, method)
    # What the card claims on the full held-out set: global edits learnt well beyond doing nothing.
    gains = record["targets"]["gain_over_identity_db"]
    assert gains["lowlight"] >= 1.0 and gains["dehaze"] >= 1.0
    assert record["targets"]["beats_identity_on_3"]  # issue 15's first target for the base
    assert record["autoencoder"]["text_encoder_fit"]["steps"] > 0  # its text encoder tells the edits apart
    assert sorted(record["targets"]["tasks_beating_identity_by_1db"]) == sorted(t for t, g in gains.items() if g >= 1.0)


def test_alias_and_scratch_start_share_the_base_latent_space(tmp_path):
    from instructsd.models.loading import load_components

    parts = load_components(TINY_BASE_ALIAS)
    start = scratch_start(TINY_BASE_ALIAS, tmp_path / "start")
    sd = StableDiffusionPipeline.from_pretrained(start, safety_checker=None, requires_safety_checker=False)
    assert sd.unet.config.in_channels == 4
    assert sd.unet.config.block_out_channels == parts.unet.config.block_out_channels
    for name, tensor in parts.vae.state_dict().items():
        assert torch.equal(tensor, sd.vae.state_dict()[name]), name
    assert sd.scheduler.config.prediction_type == parts.scheduler.config.prediction_type


def test_quickstart_compares_both_starts_with_validation_curves(tmp_path):
    from instructsd.recipes.quickstart import BASE_LABEL, SCRATCH_LABEL, TUNED_LABEL, run_quickstart

    report = run_quickstart(tmp_path / "qs", train_steps=2, crops_per_image=1, eval_per_task=1, validation_every=1,
                            progress=False)
    record = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert set(record["psnr"]) == {BASE_LABEL, TUNED_LABEL, SCRATCH_LABEL, "identity", "ground_truth"}
    for label in (TUNED_LABEL, SCRATCH_LABEL):
        assert [step for step, _ in record["curves"]["psnr"][label]] == [1, 2]
    html = report.read_text()
    assert TUNED_LABEL in html and SCRATCH_LABEL in html and "<svg" in html
    # The quickstart replaces its own folder but refuses to delete one it did not make.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InstructSDError, match="not made by the quickstart"):
        run_quickstart(tmp_path / "mine", train_steps=1, progress=False)


def test_identity_init_returns_the_image_latents_and_still_learns():
    from diffusers import UNet2DConditionModel

    from instructsd.models.identity_init import identity_init

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=1)
    identity_init(unet, scaling_factor=0.8)
    image = torch.randn(3, 4, 16, 16) * 1.5 + 0.5  # latents with their own mean and spread
    noisy = torch.randn(3, 4, 16, 16)
    text = torch.randn(3, 7, 32)
    out = unet(torch.cat([noisy, image], 1), torch.tensor([999, 400, 3]), encoder_hidden_states=text).sample
    assert (out - 0.8 * image).abs().max() < 0.05  # x0 prediction = the input image, whatever t, noise or text

    # Zeroed branches are not dead ends: within a few steps every block's last layer is learning.
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    watched = [unet.up_blocks[-1].resnets[0].conv2.weight, unet.down_blocks[-1].attentions[0].proj_out.weight,
               unet.mid_block.resnets[0].conv2.weight]
    for _ in range(3):
        out = unet(torch.cat([noisy, image], 1), torch.tensor([999, 400, 3]), encoder_hidden_states=text).sample
        loss = (out - 0.8 * image.flip(-1)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(w.grad.abs().sum() > 0 and w.abs().sum() > 0 for w in watched)

    with pytest.raises(InstructSDError, match="norm_num_groups=1"):
        identity_init(UNet2DConditionModel.from_config({**unet.config, "norm_num_groups": 8}))


def test_pretrain_cli_takes_recipe_changes_as_key_value(tmp_path, capsys):
    assert run(["model", "pretrain-tiny", str(tmp_path / "pre"), "train_step=5"]) == 1
    assert "unknown config key 'train_step'" in capsys.readouterr().err
    assert run(["model", "pretrain-tiny", str(tmp_path / "pre"), "size=big"]) == 1
    assert "config key 'size'" in capsys.readouterr().err
    assert run(["model", "pretrain-tiny", str(tmp_path / "pre"), "train={learnin_rate: 1.0e-3}"]) == 1
    assert "unknown config key 'learnin_rate' in the pretrain recipe's 'train' mapping" in capsys.readouterr().err
    assert not (tmp_path / "pre").exists()  # refused before anything is written


def test_a_record_without_newer_keys_reads_as_the_first_base_was_made():
    first = recipe_from_record({"tasks": ["denoise"], "vae_channels": [32]})
    assert first.photos == "skimage-15" and first.holdout == () and first.vae_norm_groups is None
    assert first.text_fit_steps == 0  # its text encoder was left random
    assert PretrainConfig().vae_norm_groups == 1  # today's recipe


def test_pretrain_train_config_is_the_preset_with_typed_changes(tmp_path):
    cfg = replace(SMALL, train={**SMALL.train, "learning_rate": "2e-3", "use_ema": "yes"})  # as YAML 1.1 may read them
    tcfg = train_config(cfg, tmp_path / "init", tmp_path / "data", tmp_path / "out", report_to="none", seed=7)
    assert (tcfg.learning_rate, tcfg.use_ema, tcfg.seed) == (2e-3, True, 7)
    # A keyword keeps its type: the formatted 'report_to=none' override this replaced read as null (tensorboard).
    assert tcfg.report_to == "none"
    assert (tcfg.base_model, tcfg.resolution, tcfg.max_train_steps, tcfg.cache_latents) == (str(tmp_path / "init"), 32, 3, True)
    assert tcfg.lr_warmup_steps == load_config(TrainConfig, "tiny-cpu").lr_warmup_steps  # the rest is the preset's


def test_continued_pretraining_starts_from_the_bases_weights_with_a_training_scheduler(tmp_path):
    import hashlib

    from diffusers import DDPMScheduler

    from instructsd.recipes.pretrain_tiny import build_init_model

    cfg = PretrainConfig(init_from=TINY_BASE_ALIAS, train={"prediction_type": "sample"})
    stats = build_init_model(cfg, tmp_path / "data-unused", tmp_path / "init")
    assert stats["continued_from"] == TINY_BASE_ALIAS and stats["psnr"] == tiny_base_record()["autoencoder"]["psnr"]
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (tiny_base_path() / part).glob("*.safetensors")
        copied = tmp_path / "init" / part / weights.name
        assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256(weights.read_bytes()).digest()
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "init", subfolder="scheduler")
    assert type(scheduler) is DDPMScheduler and scheduler.config.prediction_type == "sample"
    assert not (tmp_path / "init" / "README.md").exists()  # the base's card stays behind
    with pytest.raises(InstructSDError, match="not a model folder"):
        build_init_model(PretrainConfig(init_from=str(tmp_path)), tmp_path, tmp_path / "init2")
