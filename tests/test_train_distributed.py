"""Two data-parallel CPU processes through `accelerate launch`: ranks stay identical, batches add up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from instructsd.data.build import build_dataset

from conftest import photo


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI not installed")
def test_two_cpu_processes_hold_identical_weights_with_the_expected_effective_batch(tiny_model, tmp_path):
    data = tmp_path / "pairs"
    build_dataset([(f"p{i}", photo(i, (40, 32))) for i in range(3)], data, size=16, crops_per_image=1, val_fraction=0.34,
                  progress=False)
    out = tmp_path / "run"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    # `--cpu` alone makes accelerate start ONE process; --multi_gpu starts torchrun's two, and the
    # recipe picks accelerate's gloo (MULTI_CPU) backend itself when there is no CUDA.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", "-m", "instructsd.cli", "train", "tiny-cpu", f"base_model={tiny_model}",
           f"dataset={data}", f"output_dir={out}", "resolution=16", "max_train_steps=2", "train_batch_size=2",
           "gradient_accumulation_steps=2", "lr_scheduler=constant", "lr_warmup_steps=0", "log_every=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["unet_sha256"] == ranks[1]["unet_sha256"]  # gradients were all-reduced every step
    # effective batch = batch 2 x accumulation 2 x 2 processes = 8 samples per optimizer step
    assert ranks[0]["samples"] == ranks[1]["samples"] == 2 * 2 * 2
    assert sum(r["samples"] for r in ranks) == 8 * 2
    losses = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in losses] == [1, 2]
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # The launcher's --mixed_precision is honoured when the config leaves it unset (tiny-cpu does).
    assert "mixed_precision: bf16" in (out / "config.yaml").read_text()
