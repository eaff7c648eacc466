"""Aspect-ratio buckets (issue 18): the bucket set, single-bucket batches equal over ranks, and a
bucketed run on 96×64 and 64×96 pairs that trains non-square, records its buckets, caches per
bucket and resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature

from conftest import photo
from instructsd.config import load_config
from instructsd.errors import InstructSDError
from instructsd.train.batches import read_train_rows, training_batches
from instructsd.train.buckets import bucket_batches, bucket_set, merge_small, nearest_bucket
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train


@pytest.fixture(autouse=True)
def one_thread():
    # A tiny UNet gains nothing from intra-op threads, which only spin against other jobs on a small shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_bucket_set_spans_1_to_2_and_2_to_1_at_about_the_area():
    buckets = bucket_set(256 * 256, 64)
    assert {(256, 256), (192, 384), (384, 192)} <= set(buckets)
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and 0.5 <= w / h <= 2
        assert abs(w * h - 256 * 256) / (256 * 256) < 0.2
    assert buckets == sorted(buckets, key=lambda b: b[0] / b[1])
    assert buckets[nearest_bucket(3000, 2000, buckets)] == (320, 192)  # 3:2 -> 5:3
    assert buckets[nearest_bucket(2000, 3000, buckets)] == (192, 320)
    assert buckets[nearest_bucket(10, 10, buckets)] == (256, 256)


def test_batches_hold_one_bucket_every_rank_gets_as_many_and_small_buckets_merge():
    buckets = [(24, 48), (32, 32), (40, 24), (48, 24)]
    assigned = np.array([0] * 7 + [1] * 9 + [2] * 1 + [3] * 3)
    # 2 processes × 2 samples: the 1-row 40×24 bucket joins 48×24 (nearest aspect), which then fills a batch.
    merged = merge_small(assigned, buckets, min_rows=4)
    assert np.bincount(merged, minlength=4).tolist() == [7, 9, 0, 4]
    order = np.random.default_rng(0).permutation(len(merged))
    per_rank = [bucket_batches(order, merged, 2, rank, 2) for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 1 + 2 + 1  # full global batches only; tails dropped
    for a, b in zip(*per_rank):
        assert len({int(merged[i]) for i in a + b}) == 1 and not set(a) & set(b)
    assert per_rank[0] == bucket_batches(order, merged, 2, 0, 2)  # a pure function of the order


@pytest.fixture(scope="module")
def mixed_shapes(tmp_path_factory) -> Path:
    """8 training pairs, half 96×64 and half 64×96 (input and target the same size)."""
    def split(n: int, offset: int) -> Dataset:
        rows = [{"input_image": photo(offset + i, (96, 64) if i % 2 else (64, 96)),
                 "edited_image": photo(offset + i + 50, (96, 64) if i % 2 else (64, 96)),
                 "edit_prompt": "brighten it", "task": "denoise"} for i in range(n)]
        data = Dataset.from_list(rows)
        return data.cast_column("input_image", ImageFeature()).cast_column("edited_image", ImageFeature())

    out = tmp_path_factory.mktemp("shapes") / "pairs"
    DatasetDict(train=split(8, 0), validation=split(2, 20)).save_to_disk(str(out))
    return out


def _cfg(model, data, out, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "aspect_buckets=true",
        "bucket_area=512", "bucket_step=8", "train_batch_size=2", "gradient_accumulation_steps=1", "log_every=1", "report_to=none", *extra])


def test_portrait_and_landscape_pairs_train_in_their_own_buckets_and_resume_bit_exactly(tiny_model, mixed_shapes,
                                                                                     tmp_path):
    cfg = _cfg(tiny_model, mixed_shapes, tmp_path / "full", "max_train_steps=5", "checkpoint_every=2")
    shapes = [tuple(b["input_pixels"].shape[2:]) for b in training_batches(cfg, read_train_rows(cfg)).epoch(0)]
    assert sorted(shapes) == [(16, 32)] * 2 + [(32, 16)] * 2  # (height, width): never square, never mixed

    full = train(cfg, progress=False)
    record = json.loads((tmp_path / "full" / "buckets.json").read_text())
    assert record["area"] == 512 and record["rows"] == 8
    assert [(b["width"], b["height"], b["rows"]) for b in record["buckets"]] == [(16, 32, 4), (24, 24, 0), (32, 16, 4)]

    # Killed at step 3 (mid-epoch: 4 batches per epoch), resumed: the same losses as the uninterrupted run.
    part = _cfg(tiny_model, mixed_shapes, tmp_path / "part", "max_train_steps=5", "checkpoint_every=2")
    assert [s for s, _ in train(part, progress=False, stop_at=3).losses] == [1, 2, 3]
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["data_layout"]["aspect_buckets"] is True and state["position"] == 3
    resumed = train(_cfg(tiny_model, mixed_shapes, tmp_path / "part", "max_train_steps=5", "checkpoint_every=2",
                         "resume=latest"), progress=False)
    assert resumed.resumed_from.name == "step-0000003" and resumed.losses == full.losses

    # Buckets are part of the data position: resuming without them is refused.
    with pytest.raises(InstructSDError, match="other data settings"):
        train(_cfg(tiny_model, mixed_shapes, tmp_path / "part", "max_train_steps=6", "resume=latest",
                   "aspect_buckets=false"), progress=False)


def test_the_latent_cache_is_stored_per_bucket_and_trains_on_the_same_numbers(tiny_model, mixed_shapes, tmp_path):
    common = ("max_train_steps=2", "center_crop=true")
    cached = train(_cfg(tiny_model, mixed_shapes, tmp_path / "cached", *common, "cache_latents=true"), progress=False)
    pixels = train(_cfg(tiny_model, mixed_shapes, tmp_path / "pixels", *common), progress=False)
    assert sorted(p.name for p in (tmp_path / "cached" / "cache" / "latents").iterdir()) == ["16x32", "32x16"]
    np.testing.assert_allclose([v for _, v in cached.losses], [v for _, v in pixels.losses], rtol=1e-5)


def test_streaming_refuses_buckets_in_one_line():
    with pytest.raises(InstructSDError, match="streaming=true and aspect_buckets=true do not combine"):
        TrainConfig(streaming=True, aspect_buckets=True)
    with pytest.raises(InstructSDError, match="bucket_step must be a positive multiple of 8"):
        TrainConfig(aspect_buckets=True, bucket_step=12)
