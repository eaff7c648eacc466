"""Aspect-ratio buckets (issue 18): train on each pair's own shape instead of a square crop.

With ``aspect_buckets: true`` the trainer picks a set of sizes of about ``bucket_area`` pixels
(default ``resolution²``), sides multiples of ``bucket_step`` (64 for Stable Diffusion: the VAE's
factor 8 times the UNet's three downsamplings), aspect ratios from 1:2 to 2:1. Each training pair
goes to the bucket nearest its input image's aspect ratio (in log ratio, so 1:2 and 2:1 are equally
far from square) and is scaled to cover it and cropped to it, input and target with one window
(train/data.py's ``paired_crop``). A batch holds a single bucket, since a batch is one tensor.

Batches: the epoch's order is the usual seeded permutation (or weighted draws) of (seed, epoch);
walking it, each row joins its bucket's pending global batch (``train_batch_size × processes``
rows), which is emitted when full and sliced by rank — every process gets the same number of
batches, all of one bucket at each position. Tails that fill no global batch are dropped, as
``rank_batches`` drops the epoch's tail. The batch list is a pure function of (seed, epoch), so a
checkpoint's (epoch, batch) position resumes it exactly. A bucket with too few rows to fill one
global batch is merged into its nearest bucket in aspect ratio before training, so every row
trains. The buckets and their row counts go to ``buckets.json`` in the run folder.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from instructsd.errors import InstructSDError
from instructsd.files import atomic_write_text

MAX_RATIO = 2.0  # 1:2 … 2:1
BUCKETS_FILE = "buckets.json"


def bucket_set(area: int, step: int, max_ratio: float = MAX_RATIO) -> list[tuple[int, int]]:
    """``(width, height)`` sizes of about ``area`` pixels, sides multiples of ``step``, aspect within
    ``1/max_ratio … max_ratio``, from the tallest to the widest; a portrait for every landscape."""
    found = set()
    for width in range(step, int(math.sqrt(area * max_ratio)) + 2 * step, step):
        height = max(step, round(area / width / step) * step)
        if 1 / max_ratio <= width / height <= max_ratio:
            found |= {(width, height), (height, width)}
    if not found:
        raise InstructSDError(f"no aspect bucket of area {area} with sides multiples of {step}; raise bucket_area "
                              f"to at least {step * step} or lower bucket_step")
    return sorted(found, key=lambda b: (b[0] / b[1], b[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """The bucket whose aspect ratio is closest to ``width / height`` in log ratio (ties: the first, the taller)."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - ratio))


def image_size(value) -> tuple[int, int] | None:
    """An image cell's (width, height) from its header, without decoding pixels; None when unreadable."""
    try:
        if isinstance(value, Image.Image):
            return value.size
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            with Image.open(io.BytesIO(data) if data else path) as im:
                return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    return None


def assign_buckets(rows, column: str, buckets: list[tuple[int, int]], min_rows: int) -> np.ndarray:
    """Each row's bucket index, from its ``column`` image's size (read from the header only).

    A row whose header cannot be read goes to the squarest bucket: it fails again when decoded and
    is counted as a bad row there. Buckets with fewer than ``min_rows`` rows (one global batch) are
    merged into their nearest populous bucket in aspect ratio, smallest first.
    """
    from datasets import Image as ImageFeature

    cells = rows
    if isinstance(rows.features.get(column), ImageFeature):
        cells = rows.cast_column(column, ImageFeature(decode=False))
    square = nearest_bucket(1, 1, buckets)
    assigned = np.empty(len(rows), np.int64)
    for i, value in enumerate(cells[column]):
        size = image_size(value)
        assigned[i] = square if size is None else nearest_bucket(*size, buckets)
    return merge_small(assigned, buckets, min_rows)


def merge_small(assigned: np.ndarray, buckets: list[tuple[int, int]], min_rows: int) -> np.ndarray:
    """Move the rows of buckets holding fewer than ``min_rows`` into the nearest bucket that keeps
    rows, until every used bucket fills a global batch (or one bucket is left)."""
    assigned = assigned.copy()
    log_ratio = [math.log(w / h) for w, h in buckets]
    while True:
        counts = np.bincount(assigned, minlength=len(buckets))
        used = [i for i in range(len(buckets)) if counts[i]]
        small = [i for i in used if counts[i] < min_rows]
        if not small or len(used) == 1:
            return assigned
        victim = min(small, key=lambda i: (counts[i], i))
        into = min((i for i in used if i != victim), key=lambda i: (abs(log_ratio[i] - log_ratio[victim]), -counts[i], i))
        assigned[assigned == victim] = into


def bucket_batches(order: np.ndarray, assigned: np.ndarray, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of one epoch, each of a single bucket (see the module docstring).

    When no bucket fills a global batch (a dataset smaller than one), the largest bucket's rows are
    cycled to fill one, as ``rank_batches`` does for a tiny epoch.
    """
    per_step = batch_size * world
    pending: dict[int, list[int]] = {}
    full: list[list[int]] = []
    for index in order:
        bucket = int(assigned[index])
        pending.setdefault(bucket, []).append(int(index))
        if len(pending[bucket]) == per_step:
            full.append(pending.pop(bucket))
    if not full and pending:
        largest = max(pending.values(), key=len)
        full.append([int(i) for i in np.resize(largest, per_step)])
    return [chunk[rank * batch_size : (rank + 1) * batch_size] for chunk in full]


# --- the run's record --------------------------------------------------------------------------


def write_bucket_record(out: Path, buckets: list[tuple[int, int]] | None, assigned: np.ndarray | None, area: int,
                        step: int) -> None:
    """``buckets.json``: every bucket of the set with its training rows (main process; nothing without buckets)."""
    if buckets is None:
        return
    counts = np.bincount(assigned, minlength=len(buckets))
    record = {"area": area, "step": step, "rows": int(len(assigned)),
              "buckets": [{"width": w, "height": h, "rows": int(n)} for (w, h), n in zip(buckets, counts)]}
    atomic_write_text(Path(out) / BUCKETS_FILE, json.dumps(record, indent=2) + "\n")
