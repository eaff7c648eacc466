"""Training data: order as a function of (seed, epoch), per-sample augmentation, deferred instructions, mixtures."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image as ImageFeature, Value
from PIL import Image

from instructsd.data.instructions import all_instructions
from instructsd.errors import InstructSDError
from instructsd.train.batches import PairDataset, collate
from instructsd.train.data import epoch_order, paired_transform, rank_batches, task_row_weights


def _rows(n: int, prompts=None, tasks=None) -> Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict(
        {"input_image": images, "edited_image": images, "edit_prompt": prompts or ["Denoise the image."] * n,
         "task": tasks or ["denoise"] * n},
        features=Features({"input_image": ImageFeature(), "edited_image": ImageFeature(), "edit_prompt": Value("string"),
                           "task": Value("string")}),
    )


def test_order_is_a_pure_function_of_seed_and_epoch():
    assert np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 3, 1))
    assert sorted(epoch_order(50, 3, 1)) == list(range(50))
    assert not np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 3, 2))
    assert not np.array_equal(epoch_order(50, 3, 1), epoch_order(50, 4, 1))


def test_ranks_get_disjoint_equal_batches_covering_the_global_batch():
    order = epoch_order(20, 0, 0)
    r0, r1 = rank_batches(order, 3, 0, 2), rank_batches(order, 3, 1, 2)
    assert len(r0) == len(r1) == 3  # 20 // (3 * 2); the tail is dropped
    for a, b in zip(r0, r1):
        assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert rank_batches(np.arange(2), 4, 0, 1) == [[0, 1, 0, 1]]  # tiny data is cycled to fill a batch


def test_flips_are_independent_per_sample_and_applied_to_both_images():
    source = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3)))
    flips = []
    for index in range(64):
        rng = np.random.default_rng([0, 0, index, 1])
        x, y = paired_transform(source, source, 32, rng, flip=True)
        assert torch.equal(x, y)  # input and target always get the same crop and flip
        flips.append(bool(x[0, 0, 0] > x[0, 0, -1]))
    assert 16 < sum(flips) < 48  # about half, decided sample by sample


def test_resize_keeps_aspect_and_crops_instead_of_squashing():
    wide = Image.new("RGB", (64, 32))
    wide.paste((255, 0, 0), (0, 0, 16, 32))  # a red band on the left quarter
    x, _ = paired_transform(wide, wide, 16, np.random.default_rng(0), flip=False, center_crop=True)
    assert x.shape == (3, 16, 16)
    assert (x[0] < 0).all()  # the centre crop of a 32x16 resize never reaches the band


def test_deferred_rows_draw_training_paraphrases_and_never_held_out_ones():
    rows = _rows(4, prompts=["", "", "", "Keep this one."])
    data = PairDataset(rows, size=16, flip=False, seed=0, input_column="input_image", edited_column="edited_image",
                       prompt_column="edit_prompt", task_column="task")
    drawn = []
    for epoch in range(30):
        data.set_epoch(epoch)
        drawn += [data[i]["prompt"] for i in range(3)]
        assert data[3]["prompt"] == "Keep this one."
    train, held_out = set(all_instructions("denoise")), set(all_instructions("denoise", held_out=True))
    assert set(drawn) <= train and not set(drawn) & held_out
    assert len(set(drawn)) > 5  # a fresh draw each time a row is used
    data.set_epoch(7)
    first = [data[i]["prompt"] for i in range(3)]
    data.set_epoch(7)
    assert [data[i]["prompt"] for i in range(3)] == first  # seeded by (seed, epoch, row)


def test_task_weights_set_the_mixture_whatever_the_task_sizes():
    tasks = ["denoise"] * 90 + ["lowlight"] * 10
    weights = task_row_weights(tasks, {"denoise": 1, "lowlight": 1})
    counts = Counter(tasks[i] for epoch in range(20) for i in epoch_order(100, 0, epoch, weights))
    assert counts["lowlight"] / sum(counts.values()) == pytest.approx(0.5, abs=0.05)
    assert task_row_weights(tasks, {"denoise": 1})[-1] == 0  # unnamed tasks are left out
    with pytest.raises(InstructSDError, match="derain"):
        task_row_weights(tasks, {"derain": 1})


def test_undecodable_images_are_reported_not_fatal():
    png = io.BytesIO()
    Image.new("RGB", (24, 24), (10, 20, 30)).save(png, format="PNG")
    good = {"bytes": png.getvalue(), "path": None}
    bad = {"bytes": b"not an image", "path": None}
    rows = Dataset.from_dict(
        {"input_image": [good, bad, good], "edited_image": [good] * 3, "edit_prompt": ["x"] * 3},
        features=Features({"input_image": ImageFeature(), "edited_image": ImageFeature(), "edit_prompt": Value("string")}))
    data = PairDataset(rows, size=16, flip=False, seed=0, input_column="input_image", edited_column="edited_image",
                       prompt_column="edit_prompt")
    batch = collate([data[i] for i in range(3)])
    assert batch["bad"] == [1] and batch["indices"] == [0, 2]
    assert batch["input_pixels"].shape == (2, 3, 16, 16)
