"""Training batches: paired images resized without squashing, cropped and flipped together.

Every random choice for a sample comes from a generator seeded by (seed, epoch, row), and the
data order is a pure function of (seed, epoch) — so a sample's augmentation does not depend on
batch composition, worker count or process rank, two samples in one batch flip independently
(unlike the reference script), and a resumed run can jump straight to its data position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from instructsd.data.load import load_split  # noqa: F401 -- the reader moved to data/ (issue 12); kept for the trainer
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
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → float tensor in [-1, 1], CHW (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def draw_flip(rng: np.random.Generator, flip: bool) -> bool:
    """The flip decision is the first draw of a sample's stream, so cached and pixel paths agree."""
    return bool(rng.random() < 0.5) if flip else False


def paired_transform(source: Image.Image, target: Image.Image, size: int, rng: np.random.Generator, flip: bool,
                     center_crop: bool = False, flipped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize both to the same short side, then one crop and one flip applied to both."""
    source = source.convert("RGB")
    target = target.convert("RGB")
    if target.size != source.size:  # paired data from different tools can differ by a few px
        target = target.resize(source.size, Image.BICUBIC)
    flipped = draw_flip(rng, flip) if flipped is None else flipped
    source, target = resize_short_side(source, size), resize_short_side(target, size)
    w, h = source.size
    if center_crop:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    box = (left, top, left + size, top + size)
    source, target = source.crop(box), target.crop(box)
    if flipped:
        source = source.transpose(Image.FLIP_LEFT_RIGHT)
        target = target.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(source), to_tensor(target)


# --- datasets ---------------------------------------------------------------------------------


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


class PairDataset(torch.utils.data.Dataset):
    """A map-style view of an instruction dataset yielding augmented tensors and prompts.

    A row whose images fail to decode yields ``{"bad": True}``; :func:`collate` drops it and
    the recipe counts it against ``max_bad_fraction``.
    """

    def __init__(self, rows: Dataset, *, size: int, flip: bool, seed: int, input_column: str, edited_column: str,
                 prompt_column: str, task_column: str | None = None, center_crop: bool = False):
        self.rows, self.size, self.flip, self.seed, self.center_crop = rows, size, flip, seed, center_crop
        self.columns = (input_column, edited_column, prompt_column)
        self.task_column = task_column if task_column and task_column in rows.column_names else None
        self.instruction = InstructionSource(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        src_col, tgt_col, prompt_col = self.columns
        try:
            row = self.rows[int(index)]
            rng = np.random.default_rng([self.seed, self.epoch, int(index), _AUGMENT])
            source, target = paired_transform(row[src_col], row[tgt_col], self.size, rng, self.flip, self.center_crop)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's decode errors
            return {"bad": True, "index": int(index), "error": str(err)}
        task = row[self.task_column] if self.task_column else None
        prompt = self.instruction(row[prompt_col], task, self.epoch, int(index))
        return {"input_pixels": source, "edited_pixels": target, "prompt": prompt, "index": int(index)}


class CachedPairDataset(torch.utils.data.Dataset):
    """The same samples as :class:`PairDataset` with ``center_crop``, read from the latent cache.

    The flip is drawn from the same per-sample stream, so a cached run sees exactly the
    samples the pixel run sees, already encoded.
    """

    def __init__(self, latents: Dataset, prompts: Sequence[str], tasks: Sequence[str | None], *, flip: bool, seed: int):
        self.latents = latents.with_format("torch")
        self.prompts, self.tasks, self.flip, self.seed = list(prompts), list(tasks), flip, seed
        self.instruction = InstructionSource(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(index), _AUGMENT])
        side = int(draw_flip(rng, self.flip))
        row = self.latents[int(index)]
        if "ok" in row and not bool(row["ok"]):  # failed to decode when the cache was built
            return {"bad": True, "index": int(index), "error": "image failed to decode when the cache was built"}
        prompt = self.instruction(self.prompts[index], self.tasks[index], self.epoch, int(index))
        return {"input_latents": row[f"input_mode_{side}"], "target_moments": row[f"target_moments_{side}"],
                "prompt": prompt, "index": int(index)}


def collate(samples: list[dict]) -> dict:
    """Stack good samples; report the indices of those that failed to decode."""
    good = [s for s in samples if not s.get("bad")]
    out: dict = {"prompts": [s["prompt"] for s in good], "indices": [s["index"] for s in good],
                 "bad": [s["index"] for s in samples if s.get("bad")]}
    for key in ("input_pixels", "edited_pixels", "input_latents", "target_moments"):
        if good and key in good[0]:
            out[key] = torch.stack([s[key] for s in good])
    return out


def batch_loader(dataset: torch.utils.data.Dataset, batches: list[list[int]], num_workers: int) -> torch.utils.data.DataLoader:
    """Iterate precomputed index batches (the order is ours, not the DataLoader's)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)

