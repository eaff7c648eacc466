"""Resuming never unpickles arbitrary objects from a checkpoint folder (issue 17, defect 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from instructsd.config import load_config
from instructsd.data.build import build_dataset
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

from conftest import photo


class Payload:
    """What a hostile checkpoint carries: unpickling it calls a function of the attacker's choice."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "payload ran"))


def _cfg(model, data, out, *extra):
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=2",
        "max_train_steps=2", "checkpoint_every=1", "report_to=none", "use_ema=true", *extra])


def test_a_pickle_in_a_checkpoint_is_refused_and_never_runs(tiny_model, tmp_path):
    data = tmp_path / "data"
    build_dataset([(f"p{i}", photo(i, (40, 32))) for i in range(3)], data, size=24, crops_per_image=1,
                  val_fraction=0.34, progress=False)
    out = tmp_path / "run"
    train(_cfg(tiny_model, data, out), progress=False, stop_at=1)
    ckpt = out / "checkpoints" / "step-0000001"
    # The files we write load under weights_only: tensors and plain values only.
    for name in ("optimizer.pt", "lr_scheduler.pt", "ema.pt", "rng-rank0.pt"):
        torch.load(ckpt / name, weights_only=True)

    marker = tmp_path / "pwned.txt"
    with open(ckpt / "lr_scheduler.pt", "wb") as fh:
        pickle.dump({"last_epoch": Payload(marker)}, fh)
    with pytest.raises(InstructSDError, match="trust_checkpoint_pickles=true"):
        train(_cfg(tiny_model, data, out, "resume=latest"), progress=False)
    assert not marker.exists()  # refused before anything was unpickled

    # The opt-in exists for one's own old checkpoints, and then the pickle is loaded (here: it runs).
    with pytest.raises(Exception):
        train(_cfg(tiny_model, data, out, "resume=latest", "trust_checkpoint_pickles=true"), progress=False)
    assert marker.read_text() == "payload ran"
