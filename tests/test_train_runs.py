"""A run under mixed precision end to end, the run folder's safety rules, and what trackers receive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instructsd.config import load_config
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.loop import resolve_mixed_precision, train

from conftest import photo


@pytest.fixture(scope="module")
def dataset(pairs_24px) -> Path:
    return pairs_24px


def _cfg(model, data, out, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=2",
        "lr_warmup_steps=1", "log_every=1", *extra])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bf16_run_validates_checkpoints_resumes_saves_and_edits(ip2p_hub_model, dataset, tmp_path):
    # Validation under bf16 used to die at the VAE decode ("Input type (float) and bias type (c10::BFloat16)").
    # On the timbrooks/instruct-pix2pix-layout fixture: factor-8 VAE, 768-wide text encoder, safety checker.
    tiny_model = ip2p_hub_model
    common = ("resolution=32", "mixed_precision=bf16", "max_train_steps=4", "validation_every=2", "num_validation_images=1",
              "validation.num_inference_steps=1", "checkpoint_every=2", "use_ema=true", "ema_decay=0.9", "report_to=tensorboard")
    full = train(_cfg(tiny_model, dataset, tmp_path / "full", *common), progress=False)
    part = train(_cfg(tiny_model, dataset, tmp_path / "part", *common), progress=False, stop_at=3)
    assert [s for s, _ in part.losses] == [1, 2, 3]
    resumed = train(_cfg(tiny_model, dataset, tmp_path / "part", *common, "resume=latest"), progress=False)
    assert resumed.resumed_from.name == "step-0000003"
    assert resumed.losses == full.losses  # bf16 autocast on the CPU is deterministic too
    assert [m["step"] for m in _lines(tmp_path / "part" / "validation.jsonl")] == [2, 4]
    assert _lines(tmp_path / "part" / "validation.jsonl") == _lines(tmp_path / "full" / "validation.jsonl")

    # The saved model is fp32 whatever trained it, and edits in bf16 on the CPU.
    weights = load_file(str(tmp_path / "full" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    pipe = load_pipeline(tmp_path / "full" / "final", device="cpu", dtype="bf16")
    out = edit_images(pipe, [photo(9, (32, 24))], ["denoise the image"], EditSettings(num_inference_steps=2))[0]
    assert out.size == (32, 24) and np.asarray(out).std() > 0


def test_tensorboard_gets_loss_lr_grad_norm_validation_and_grids(tiny_model, dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_cfg(tiny_model, dataset, out, "max_train_steps=2", "validation_every=2", "num_validation_images=1",
               "validation.num_inference_steps=1", "report_to=tensorboard"), progress=False)
    events = EventAccumulator(str(next(p.parent for p in (out / "tensorboard").rglob("events.out.tfevents.*")
                                       if "hparams" not in str(p) and p.stat().st_size > 0)),
                              size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "val/psnr", "val/ssim"):
        assert tag in tags["scalars"], tags
    logged = _lines(out / "losses.jsonl")
    tb = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in tb] == [1, 2]
    assert np.allclose([v for _, v in tb], [e["loss"] for e in logged])
    assert all(e["grad_norm"] > 0 for e in logged)
    assert [e.step for e in events.Scalars("val/psnr")] == [2]
    assert "validation/grid" in tags["images"]


def test_launcher_precision_is_taken_when_the_config_leaves_it_unset(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(None) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("bf16") == "bf16"
    with pytest.raises(InstructSDError, match="mixed_precision=fp16 but accelerate launch says --mixed_precision bf16"):
        resolve_mixed_precision("fp16")
    # `accelerate launch` without the flag passes 'no': the config's choice stands.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_mixed_precision("bf16") == "bf16"


def test_nothing_of_an_earlier_run_is_lost(tiny_model, dataset, tmp_path):
    out = tmp_path / "run"
    first = train(_cfg(tiny_model, dataset, out, "max_train_steps=2", "report_to=none"), progress=False)
    losses_before = (out / "losses.jsonl").read_text()
    final_before = (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    # resume=latest with nothing to resume says so and touches nothing.
    with pytest.raises(InstructSDError, match="resume=latest but .* holds no checkpoint"):
        train(_cfg(tiny_model, dataset, out, "max_train_steps=2", "resume=latest"), progress=False)
    # A fresh start (or resume=auto with no checkpoint) into a folder holding a run is refused.
    for resume in ("resume=", "resume=auto"):
        with pytest.raises(InstructSDError, match="already holds a run .*overwrite=true"):
            train(_cfg(tiny_model, dataset, out, "max_train_steps=3", "seed=1", resume), progress=False)
    assert (out / "losses.jsonl").read_text() == losses_before
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == final_before

    # overwrite=true replaces the run's own files and nothing else.
    (out / "cache").mkdir()
    (out / "cache" / "keep.txt").write_text("shared cache")
    (out / "notes.txt").write_text("the user's")
    second = train(_cfg(tiny_model, dataset, out, "max_train_steps=3", "seed=1", "overwrite=true", "report_to=none"),
                   progress=False)
    assert [s for s, _ in second.losses] == [1, 2, 3] and second.losses != first.losses
    assert [e["step"] for e in _lines(out / "losses.jsonl")] == [1, 2, 3]
    assert (out / "cache" / "keep.txt").is_file() and (out / "notes.txt").is_file()

    # resume=auto into an empty folder starts fresh.
    auto = train(_cfg(tiny_model, dataset, tmp_path / "auto", "max_train_steps=1", "resume=auto", "report_to=none"),
                 progress=False)
    assert auto.resumed_from is None and [s for s, _ in auto.losses] == [1]

    # A run killed before its first checkpoint (logs, no checkpoint, no final/): the same resume=auto
    # command starts it again instead of refusing; a finished run above is still refused.
    killed = tmp_path / "killed"
    train(_cfg(tiny_model, dataset, killed, "max_train_steps=2", "report_to=none"), progress=False)
    shutil.rmtree(killed / "final")
    again = train(_cfg(tiny_model, dataset, killed, "max_train_steps=2", "resume=auto", "report_to=none"), progress=False)
    assert again.resumed_from is None and [e["step"] for e in _lines(killed / "losses.jsonl")] == [1, 2]
    assert (killed / "final").is_dir()


def test_the_posts_presets_checkpoint_and_resume_by_themselves():
    for name in ("sd15-256", "sd15-256-lora"):
        cfg = load_config(TrainConfig, name)
        assert cfg.checkpoint_every > 0 and cfg.resume == "auto", name


def test_the_cpu_trainer_keeps_freed_memory_on_glibc():
    import platform
    import resource

    import numpy as np

    from instructsd.train.allocator import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory()
    # A freed 16 MB block is reused, not faulted in again: glibc's defaults gave ~500 faults for these
    # five rounds here (transparent huge pages keep it that low), the kept memory 0.
    np.ones(4 * 2**20, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(4 * 2**20, dtype=np.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 64, faults
