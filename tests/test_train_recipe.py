"""The training recipe on a tiny model: exact resume, the latent cache, validation, faults."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict, load_from_disk
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel

from instructsd.config import load_config
from instructsd.data.build import build_dataset
from instructsd.errors import InstructSDError
from instructsd.train.cache import sample_latents
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

from conftest import photo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Builder output with every third training instruction deferred (empty → drawn from the bank)."""
    root = tmp_path_factory.mktemp("recipe-data")
    build_dataset([(f"p{i}", photo(i, (40, 32))) for i in range(4)], root / "built", size=24, crops_per_image=1,
                  val_fraction=0.25, progress=False)
    data = load_from_disk(str(root / "built"))
    train_split = data["train"].map(lambda row, i: {"edit_prompt": "" if i % 3 == 0 else row["edit_prompt"]}, with_indices=True)
    out = root / "deferred"
    DatasetDict({"train": train_split, "validation": data["validation"]}).save_to_disk(str(out))
    return out


def _cfg(model: str, data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=2",
        "lr_warmup_steps=1", "log_every=1", *extra])


def _unet(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_continues_with_exactly_the_uninterrupted_losses(ip2p_hub_model, dataset, tmp_path):
    tiny_model = ip2p_hub_model  # the hub layout: factor-8 autoencoder, CLIP-L text width, Euler ancestral sampler
    # Accumulation, EMA and the latent cache (shared by the three runs) all have state to restore.
    common = ("resolution=32", "max_train_steps=6", "train_batch_size=1", "gradient_accumulation_steps=2", "use_ema=true", "ema_decay=0.9",
              "checkpoint_every=2", "keep_last=2", "cache_latents=true", f"cache_dir={tmp_path / 'cache'}")
    # The uninterrupted run also validates: validation must not touch the training's random streams.
    full = train(_cfg(tiny_model, dataset, tmp_path / "full", *common, "validation_every=3", "num_validation_images=1",
                      "validation.num_inference_steps=1"), progress=False)
    part = train(_cfg(tiny_model, dataset, tmp_path / "part", *common), progress=False, stop_at=3)
    assert [s for s, _ in part.losses] == [1, 2, 3] and not (tmp_path / "part" / "final").exists()
    ckpts = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003"]  # atomic: no temp folders left behind

    resumed = train(_cfg(tiny_model, dataset, tmp_path / "part", *common, "resume=latest"), progress=False)
    assert resumed.resumed_from.name == "step-0000003"
    assert resumed.losses == full.losses  # exact, not approximate
    a, b = _unet(tmp_path / "full"), _unet(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the EMA weights saved as the model agree too
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    logged = [json.loads(line)["step"] for line in (tmp_path / "part" / "losses.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]

    # Validation went through the edit function at steps 3 and 6: metrics, grids, the model card.
    metrics = [json.loads(line) for line in (tmp_path / "full" / "validation.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]
    assert all(m["val/psnr"] > 0 and -1 <= m["val/ssim"] <= 1 and "val/denoise/psnr" in m for m in metrics)
    grid = Image.open(tmp_path / "full" / "validation" / "step-6.png")
    assert grid.width > 3 * 32
    assert "val/psnr" in (tmp_path / "full" / "final" / "README.md").read_text()


def test_sampling_from_cached_moments_equals_latent_dist_sample(tiny_model):
    vae = AutoencoderKL.from_pretrained(tiny_model, subfolder="vae")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        direct = dist.sample(generator=torch.Generator().manual_seed(4))
    cached = sample_latents(dist.parameters.clone(), torch.Generator().manual_seed(4))
    assert torch.equal(direct, cached)


def test_cached_training_equals_on_the_fly_encoding_and_runs_no_encoder(ip2p_hub_model, dataset, tmp_path):
    tiny_model = ip2p_hub_model
    common = ("max_train_steps=2", "resolution=32")
    fly = train(_cfg(tiny_model, dataset, tmp_path / "fly", *common, "center_crop=true"), progress=False)
    cache_dir = tmp_path / "cache"
    cached = train(_cfg(tiny_model, dataset, tmp_path / "c1", *common, "cache_latents=true", f"cache_dir={cache_dir}"),
                   progress=False)
    assert [s for s, _ in cached.losses] == [s for s, _ in fly.losses]
    assert [v for _, v in cached.losses] == pytest.approx([v for _, v in fly.losses], rel=1e-6, abs=0)
    stamp = (cache_dir / "fingerprint.json").read_text()
    assert json.loads(stamp)["prompts"] > 10  # every training paraphrase of the deferred tasks was embedded

    # A second run reuses the cache and never runs the VAE or the text encoder.
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(type(module).__name__) if isinstance(module, (AutoencoderKL, CLIPTextModel)) else None)
    try:
        again = train(_cfg(tiny_model, dataset, tmp_path / "c2", *common, "cache_latents=true", f"cache_dir={cache_dir}"),
                      progress=False)
    finally:
        hook.remove()
    assert calls == [] and again.losses == cached.losses
    assert (cache_dir / "fingerprint.json").read_text() == stamp

    # Another resolution does not match the fingerprint: the cache is rebuilt, not misused.
    train(_cfg(tiny_model, dataset, tmp_path / "c3", "max_train_steps=1", "resolution=24", "cache_latents=true",
               f"cache_dir={cache_dir}"), progress=False)
    assert (cache_dir / "fingerprint.json").read_text() != stamp


def test_nan_loss_stops_naming_step_and_samples_and_keeps_the_last_checkpoint(tiny_model, dataset, tmp_path):
    cfg = _cfg(tiny_model, dataset, tmp_path / "nan", "max_train_steps=5", "learning_rate=1e30", "lr_warmup_steps=0",
               "lr_scheduler=constant", "max_grad_norm=0", "checkpoint_every=1", "keep_last=1")
    with pytest.raises(InstructSDError, match=r"loss became .*nan.* at step 2 \(rank 0 samples \[\d+, \d+\]\).*step-0000001"):
        train(cfg, progress=False)
    kept = tmp_path / "nan" / "checkpoints" / "step-0000001"
    assert torch.isfinite(torch.stack([t.float().abs().max() for t in load_file(str(kept / "unet.safetensors")).values()])).all()


def test_missing_columns_are_named_with_the_columns_present(tiny_model, dataset, tmp_path):
    with pytest.raises(InstructSDError, match=r"lacks column\(s\) instruction .*columns: input_image, edit_prompt"):
        train(_cfg(tiny_model, dataset, tmp_path / "r", "prompt_column=instruction"), progress=False)


def _with_broken_rows(dataset: Path, out: Path, broken: int) -> Path:
    data = load_from_disk(str(dataset))
    rows = data["train"].cast_column("input_image", data["train"].features["input_image"].__class__(decode=False))

    def corrupt(row, i):
        return {"input_image": {"bytes": b"not an image", "path": None}} if i < broken else {}

    rows = rows.map(corrupt, with_indices=True).cast_column("input_image", data["validation"].features["input_image"])
    DatasetDict({"train": rows, "validation": data["validation"]}).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("cached", [False, True])
def test_images_that_fail_to_decode_are_skipped_until_too_many(tiny_model, dataset, tmp_path, cached):
    broken = _with_broken_rows(dataset, tmp_path / "broken", 1)
    extra = [f"cache_latents={str(cached).lower()}", "center_crop=true"] if cached else []
    # One batch holds the whole split, so the broken row is met in the first step.
    result = train(_cfg(tiny_model, broken, tmp_path / "ok", "max_train_steps=1", "train_batch_size=9", "max_bad_fraction=0.2",
                        *extra), progress=False)
    assert result.skipped_images == 1 and len(result.losses) == 1
    with pytest.raises(InstructSDError, match=r"1 of 9 training images failed to decode .*max_bad_fraction=0.0"):
        train(_cfg(tiny_model, broken, tmp_path / "strict", "max_train_steps=1", "train_batch_size=9", "max_bad_fraction=0",
                   *extra), progress=False)


@pytest.mark.parametrize("override, message", [
    ("task_weights={denoise: -1}", "task_weights must map task names to non-negative numbers"),
    ("task_weights=3", "config key 'task_weights': expected a mapping"),
    ("lora_rank=-1", "lora_rank must be >= 0"),
    ("lora_target_modules=[]", "lora_target_modules must be a non-empty list"),
    ("snr_gamma=0", "snr_gamma must be > 0"),
    ("max_bad_fraction=2", "max_bad_fraction must be in"),
])
def test_new_training_keys_are_validated(override, message):
    with pytest.raises(InstructSDError, match=message):
        load_config(TrainConfig, "tiny-cpu", [override])


def test_optional_extras_fail_with_the_extra_to_install(tiny_model, dataset, tmp_path):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    with pytest.raises(InstructSDError, match=r"instructsd\[bnb\]"):
        train(_cfg(tiny_model, dataset, tmp_path / "r", "use_8bit_adam=true", "max_train_steps=1"), progress=False)
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(InstructSDError, match="report_to=wandb needs the wandb package"):
            train(_cfg(tiny_model, dataset, tmp_path / "r", "report_to=wandb", "max_train_steps=1"), progress=False)
    with pytest.raises(InstructSDError, match="not a checkpoint folder"):
        train(_cfg(tiny_model, dataset, tmp_path / "r", f"resume={tmp_path}", "max_train_steps=1"), progress=False)
