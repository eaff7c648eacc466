"""Training batches: paired images resized without squashing, cropped and flipped together.

Every random choice for a sample comes from a generator seeded by (seed, epoch, row), so a
sample's augmentation does not depend on batch composition, worker count or process rank —
and, unlike the reference script, two samples in one batch flip independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from instructsd.errors import InstructSDError


def load_split(path: str | Path, split: str, columns: list[str]) -> Dataset:
    """Load one split of an instruction dataset from disk, checking the columns we need."""
    path = Path(path)
    if not path.exists():
        raise InstructSDError(f"dataset '{path}' not found; build one with `instructsd data build {path}`")
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise InstructSDError(f"'{path}' is not a saved datasets folder ({err}); build one with `instructsd data build`") from err
    if not isinstance(data, DatasetDict) or split not in data:
        have = list(data.keys()) if isinstance(data, DatasetDict) else ["(a single split)"]
        raise InstructSDError(f"dataset '{path}' has no '{split}' split (has: {', '.join(have)})")
    missing = [c for c in columns if c not in data[split].column_names]
    if missing:
        raise InstructSDError(
            f"dataset '{path}' split '{split}' has no column '{missing[0]}' (columns: {', '.join(data[split].column_names)}); "
            f"set the matching *_column config key"
        )
    return data[split]


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size``, keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → float tensor in [-1, 1], CHW (the VAE's input range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def paired_transform(source: Image.Image, target: Image.Image, size: int, rng: np.random.Generator, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize both to the same short side, then one crop and one flip applied to both."""
    source = source.convert("RGB")
    target = target.convert("RGB")
    if target.size != source.size:  # paired data from different tools can differ by a few px
        target = target.resize(source.size, Image.BICUBIC)
    source, target = resize_short_side(source, size), resize_short_side(target, size)
    w, h = source.size
    left = int(rng.integers(0, w - size + 1))
    top = int(rng.integers(0, h - size + 1))
    box = (left, top, left + size, top + size)
    source, target = source.crop(box), target.crop(box)
    if flip and rng.random() < 0.5:
        source = source.transpose(Image.FLIP_LEFT_RIGHT)
        target = target.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(source), to_tensor(target)


class PairDataset(torch.utils.data.Dataset):
    """A map-style view of an instruction dataset yielding augmented tensors and prompts."""

    def __init__(self, rows: Dataset, *, size: int, flip: bool, seed: int, input_column: str, edited_column: str, prompt_column: str):
        self.rows, self.size, self.flip, self.seed = rows, size, flip, seed
        self.columns = (input_column, edited_column, prompt_column)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[int(index)]
        src_col, tgt_col, prompt_col = self.columns
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        source, target = paired_transform(row[src_col], row[tgt_col], self.size, rng, self.flip)
        return {"input_pixels": source, "edited_pixels": target, "prompt": row[prompt_col]}


def collate(samples: list[dict]) -> dict:
    return {
        "input_pixels": torch.stack([s["input_pixels"] for s in samples]),
        "edited_pixels": torch.stack([s["edited_pixels"] for s in samples]),
        "prompts": [s["prompt"] for s in samples],
    }
