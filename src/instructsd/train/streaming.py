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
"""

from __future__ import annotations

import io
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
from datasets import Dataset, Image, IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image as PILImage

from instructsd.data.load import parquet_files
from instructsd.errors import InstructSDError
from instructsd.train.data import _AUGMENT, InstructionSource, collate, paired_transform

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
    image.load()  # decode now, so a broken image fails here and is counted
    return image


# --- samples and batches ----------------------------------------------------------------------


class StreamingPairs:
    """This process's batches of each epoch from a parquet stream, transformed as :class:`PairDataset` does."""

    def __init__(self, stream: IterableDataset, rows: int, *, size: int, flip: bool, seed: int, shuffle_buffer: int,
                 input_column: str, edited_column: str, prompt_column: str, task_column: str | None,
                 center_crop: bool, batch_size: int, rank: int, world: int, num_workers: int = 0,
                 max_samples: int | None = None):
        if max_samples:
            # Before the shuffle: the first rows in file order, as max_train_samples means for map-style data.
            stream, rows = stream.take(max_samples), min(rows, max_samples)
        if shuffle_buffer:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world) if world > 1 else stream
        self.rows, self.size, self.flip, self.seed, self.center_crop = rows, size, flip, seed, center_crop
        self.columns = (input_column, edited_column, prompt_column)
        self.task_column = task_column if task_column and task_column in (stream.column_names or []) else None
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.instruction = InstructionSource(seed)
        # PIL decodes and resizes with the GIL released, so threads keep the order and still overlap.
        self.pool = ThreadPoolExecutor(num_workers) if num_workers else None

    def __len__(self) -> int:
        return self.rows

    def sample(self, row: dict, epoch: int, k: int) -> dict:
        index = k * self.world + self.rank
        src_col, tgt_col, prompt_col = self.columns
        try:
            rng = np.random.default_rng([self.seed, epoch, index, _AUGMENT])
            source, target = paired_transform(open_image(row[src_col]), open_image(row[tgt_col]), self.size, rng, self.flip,
                                              self.center_crop)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's decode errors
            return {"bad": True, "index": f"epoch {epoch} sample {index}", "error": str(err)}
        task = row[self.task_column] if self.task_column else None
        prompt = self.instruction(row[prompt_col], task, epoch, index)
        return {"input_pixels": source, "edited_pixels": target, "prompt": prompt, "index": index}

    def batches(self, epoch: int, skip: int = 0, agree: Callable[[bool], bool] | None = None) -> Iterator[dict]:
        """Batches of ``epoch`` from batch ``skip`` on; a short tail is dropped.

        ``agree(has_batch)`` is true only if every process has a full batch: ranks' streams can
        differ in length, and all must end the epoch together.
        """
        self.stream.set_epoch(epoch)  # reseeds the shard and buffer shuffles with seed + epoch
        rows = iter(self.stream)
        k = sum(1 for _ in itertools.islice(rows, skip * self.batch_size))  # consumed before the stop, not decoded
        made = 0
        while True:
            raw = list(itertools.islice(rows, self.batch_size))
            full = len(raw) == self.batch_size
            if agree is not None:
                full = agree(full)
            if not full:
                break
            positions = range(k, k + self.batch_size)
            if self.pool:
                samples = list(self.pool.map(self.sample, raw, itertools.repeat(epoch), positions))
            else:
                samples = [self.sample(row, epoch, j) for row, j in zip(raw, positions)]
            k += self.batch_size
            made += 1
            yield collate(samples)
        if skip == 0 and made == 0:
            raise InstructSDError(
                f"the streamed dataset has {self.rows} rows: less than one batch of train_batch_size={self.batch_size} "
                f"for each of {self.world} process(es); lower train_batch_size or add rows")


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
