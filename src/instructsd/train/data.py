"""Training samples: data order, paired images resized without squashing, cropped and flipped together.

Every random choice for a sample comes from a generator seeded by (seed, epoch, row), and the
data order is a pure function of (seed, epoch) — so a sample's augmentation does not depend on
batch composition, worker count or process rank, two samples in one batch flip independently
(unlike the reference script), and a resumed run can jump straight to its data position. The
datasets and batch sources built from these are in train/batches.py.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from instructsd.errors import InstructSDError

# Independent random streams per (seed, epoch, row). numpy's SeedSequence ignores trailing
# zeros, so every stream ends in its own non-zero word.
_AUGMENT, _INSTRUCTION, _ORDER = 1, 2, 3


# --- order: a pure function of (seed, epoch) ------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Row indices of one epoch: a permutation, or ``n`` weighted draws with replacement."""
    rng = np.random.default_rng([seed, epoch, 0, _ORDER])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def task_row_weights(tasks: Sequence[str], task_weights: dict[str, float]) -> np.ndarray:
    """Per-row sampling weights giving each task its share of the mixture.

    A task's weight is split evenly over its rows, so a task with few rows is not starved.
    """
    names = sorted(set(tasks))
    unknown = sorted(set(task_weights) - set(names))
    if unknown:
        raise InstructSDError(f"task_weights names task(s) {', '.join(unknown)} not in the dataset (tasks: {', '.join(names)})")
    counts = {t: sum(1 for x in tasks if x == t) for t in names}
    row = np.array([float(task_weights.get(t, 0.0)) / counts[t] for t in tasks])
    if row.sum() <= 0:
        raise InstructSDError("task_weights gives every task in the dataset weight 0")
    return row


def rank_batches(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of one epoch: global batches of ``batch_size × world``, sliced by rank.

    The tail that does not fill a global batch is dropped; an epoch shorter than one global
    batch is cycled to fill it, so tiny datasets still train.
    """
    per_step = batch_size * world
    if len(order) < per_step:
        order = np.resize(order, per_step)
    batches = []
    for start in range(0, len(order) - per_step + 1, per_step):
        chunk = order[start + rank * batch_size : start + (rank + 1) * batch_size]
        batches.append([int(i) for i in chunk])
    return batches


# --- pixels ----------------------------------------------------------------------------------


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size``, keeping the aspect ratio."""
    return resize_to_cover(image, size, size)


def resize_to_cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale, keeping the aspect ratio, to the smallest size that covers ``width`` × ``height``
    (for a square, the shorter side becomes its side)."""
    w, h = image.size
    scale = max(width / w, height / h)
    return image.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → float tensor in [-1, 1], CHW (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def draw_flip(rng: np.random.Generator, flip: bool) -> bool:
    """The flip decision is the first draw of a sample's stream, so cached and pixel paths agree."""
    return bool(rng.random() < 0.5) if flip else False


def paired_transform(source: Image.Image, target: Image.Image, size: int | tuple[int, int], rng: np.random.Generator,
                     flip: bool, center_crop: bool = False, flipped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize both to the same short side, then one crop and one flip applied to both."""
    return paired_crop(source, target, size, rng, flip, center_crop, flipped)[:2]


def paired_crop(source: Image.Image, target: Image.Image, size: int | tuple[int, int], rng: np.random.Generator,
                flip: bool, center_crop: bool = False,
                flipped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`paired_transform`, plus where the sample came from: (original height, width, crop top,
    left, crop height, width) — SDXL's size and crop conditioning (issue 14). A flipped sample's
    left edge is measured in the flipped image, as if it had been flipped before cropping.

    ``size`` is a square's side, or an aspect bucket's ``(width, height)`` (train/buckets.py): both
    images are scaled to cover it, aspect kept, and cropped to it with one window.
    """
    width, height = (size, size) if isinstance(size, int) else size
    source = source.convert("RGB")
    target = target.convert("RGB")
    original_w, original_h = source.size
    if target.size != source.size:  # paired data from different tools can differ by a few px
        target = target.resize(source.size, Image.BICUBIC)
    flipped = draw_flip(rng, flip) if flipped is None else flipped
    source, target = resize_to_cover(source, width, height), resize_to_cover(target, width, height)
    w, h = source.size
    if center_crop:
        left, top = (w - width) // 2, (h - height) // 2
    else:
        left, top = int(rng.integers(0, w - width + 1)), int(rng.integers(0, h - height + 1))
    box = (left, top, left + width, top + height)
    source, target = source.crop(box), target.crop(box)
    if flipped:
        source = source.transpose(Image.FLIP_LEFT_RIGHT)
        target = target.transpose(Image.FLIP_LEFT_RIGHT)
    crops = torch.tensor([original_h, original_w, top, w - width - left if flipped else left, height, width])
    return to_tensor(source), to_tensor(target), crops


def mirror_crop(crops: torch.Tensor) -> torch.Tensor:
    """The size/crop row of the same crop flipped (the resized width recomputed as resize_to_cover makes it)."""
    original_h, original_w, top, left, height, width = (int(v) for v in crops)
    resized = max(width, round(original_w * max(width / original_w, height / original_h)))
    return torch.tensor([original_h, original_w, top, resized - width - left, height, width])


# --- instructions ---------------------------------------------------------------------------


class InstructionSource:
    """A row's instruction: its own, or — when empty (the `deferred` policy) — a paraphrase
    drawn from its task's bank each time the row is used (the post's open question)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, prompt: str, task: str | None, epoch: int, index: int) -> str:
        if prompt:
            return prompt
        if not task:
            raise InstructSDError(f"row {index} has an empty instruction and no task to draw one from; set task_column")
        from instructsd.data.instructions import sample_instruction

        return sample_instruction(task, np.random.default_rng([self.seed, epoch, index, _INSTRUCTION]))
