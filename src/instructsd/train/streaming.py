"""Streaming training data: parquet shards read as they are needed, never loaded whole or copied.

For data larger than memory or disk (issue 4, item 3). With ``streaming: true`` the ``dataset``
key names parquet shards — a folder (e.g. from ``instructsd data export-parquet``), a glob, or a
hub dataset id — read with ``datasets.load_dataset("parquet", streaming=True)``. The order is
datasets' seeded shard shuffle plus a buffer of ``shuffle_buffer`` rows, reseeded every epoch
(``set_epoch``), then split across processes (``split_dataset_by_node``).

A sample is named by its position ``k`` in this process's stream of the epoch (id
``k × world + rank``, unique over ranks); its crop, flip and deferred instruction come from a
generator seeded by (seed, epoch, id) — the same transform as the map-style path. The stream is
a pure function of (seed, epoch, rank), so a resumed run re-reads its epoch and drops the rows
already consumed without decoding them: it continues with exactly the uninterrupted run's samples.
This module finds and opens the shards; the batches are made by ``StreamingPairs`` in train/batches.py.
"""

from __future__ import annotations

import io

from datasets import Dataset, Image, IterableDataset, load_dataset
from PIL import Image as PILImage

from instructsd.data.load import parquet_files
from instructsd.errors import InstructSDError

# --- where the shards are ---------------------------------------------------------------------


def count_rows(files: list[str]) -> int:
    """Rows over all shards, from their parquet footers (no data is read)."""
    import fsspec
    import pyarrow.parquet as pq

    total = 0
    for name in files:
        with fsspec.open(name, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def open_stream(cfg, split: str) -> tuple[IterableDataset, int]:
    """The split as an IterableDataset of the columns we need, images left encoded; and its row count."""
    files = parquet_files(cfg.dataset, split)
    stream = load_dataset("parquet", data_files={split: files}, split=split, streaming=True)
    present = stream.column_names or list(next(iter(stream)).keys())
    need = [cfg.input_column, cfg.edited_column, cfg.prompt_column]
    missing = [c for c in need if c not in present]
    if missing:
        raise InstructSDError(
            f"dataset '{cfg.dataset}' split '{split}' lacks column(s) {', '.join(missing)} (columns: {', '.join(present)}); "
            f"set the matching *_column config key")
    keep = need + ([cfg.task_column] if cfg.task_column in present else [])
    stream = stream.select_columns(keep)
    # Decode ourselves: skipped rows on resume cost no decode, and a bad image is counted, not fatal.
    for col in (cfg.input_column, cfg.edited_column):
        if stream.features is not None and isinstance(stream.features[col], Image):
            stream = stream.cast_column(col, Image(decode=False))
    return stream, count_rows(files)


def open_image(value) -> PILImage.Image:
    """An image cell as parquet holds it: datasets' {bytes, path} struct, raw bytes, a path or a PIL image."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = value, None
    elif isinstance(value, str):
        data, path = None, value
    else:
        raise ValueError(f"cannot read an image from a {type(value).__name__}")
    if not data and not path:
        raise ValueError("empty image cell")
    image = PILImage.open(io.BytesIO(data)) if data else PILImage.open(path)
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:  # Pillow only warns up to twice its limit, then decodes
        raise PILImage.DecompressionBombError(f"{image.width}x{image.height} is over Pillow's {limit} pixel limit")
    image.load()  # decode now, so a broken image fails here and is counted
    return image


def validation_rows(cfg) -> Dataset:
    """The validation shards' first ``num_validation_images`` rows per task, read by streaming, as a small Dataset."""
    stream, _ = open_stream(cfg, "validation")
    picked, per_task = [], {}
    for row in stream:
        task = row.get(cfg.task_column, "all")
        if per_task.get(task, 0) < cfg.num_validation_images:
            per_task[task] = per_task.get(task, 0) + 1
            picked.append({**row, cfg.input_column: open_image(row[cfg.input_column]),
                           cfg.edited_column: open_image(row[cfg.edited_column])})
    return Dataset.from_list(picked)
