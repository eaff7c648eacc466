"""The trainer's one batch interface: pixels, cached latents or streamed shards.

Every source has ``len()`` (its training rows, against which undecodable images are counted)
and ``epoch(epoch, skip)``, this process's batches of that epoch from batch ``skip`` on, each a
dict of ``prompts``, ``indices`` (the good samples), ``bad`` (those that failed to decode) and
what the encoder (train/encoders.py) turns into latents: ``input_pixels`` and ``edited_pixels``,
or ``input_latents`` and ``target_moments`` read from the latent cache; and ``crops``, each sample's
original size and crop (train/data.py's ``paired_crop``), which SDXL conditions on; and ``kinds``, each
sample's ``edit`` or ``t2i`` (train/kinds.py). With ``aspect_buckets`` a batch holds one bucket's shape
(train/buckets.py). The loop never asks which source it holds; ``kind_counts(epoch, batches)`` says
how many samples of each kind the first ``batches`` batches of an epoch hold (all of it when None). Each epoch's data is a pure function of (seed, epoch, rank), so a resumed
run asks for ``epoch(epoch, position)`` and continues with exactly the uninterrupted run's batches.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from instructsd.data.images import DECODE_ERRORS, decode_reason, refuse_bombs
from instructsd.data.load import load_split
from instructsd.errors import InstructSDError
from instructsd.train.buckets import assign_buckets, bucket_batches, bucket_set
from instructsd.train.data import (
    _AUGMENT,
    InstructionSource,
    draw_flip,
    epoch_order,
    paired_crop,
    rank_batches,
    task_row_weights,
)
from instructsd.train.kinds import kind_of
from instructsd.train.streaming import open_image, open_stream


class Batches(Protocol):
    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]: ...

    def kind_counts(self, epoch: int, batches: int | None = None) -> Counter: ...


# --- the training rows ------------------------------------------------------------------------


@dataclass
class TrainRows:
    """The train split as read: a Dataset (map-style) or a parquet stream, with its row count."""

    rows: Dataset | IterableDataset
    count: int
    tasks: list[str | None]  # per row, for deferred instructions and the latent cache (map-style only)
    weights: np.ndarray | None  # per-row sampling weights from task_weights (map-style only)
    buckets: list[tuple[int, int]] | None = None  # aspect_buckets: the (width, height) set (train/buckets.py)
    assigned: np.ndarray | None = None  # aspect_buckets: each row's bucket index


def read_train_rows(cfg, world: int = 1) -> TrainRows:
    """The train split named by ``cfg.dataset``: streamed when ``cfg.streaming``, else loaded (and, with
    ``aspect_buckets``, each row given its bucket; ``world`` processes share each global batch)."""
    if cfg.streaming:  # parquet shards read as needed; no row count per task, no cache, no buckets (config checks)
        stream, count = open_stream(cfg, "train")
        return TrainRows(stream, count, [], None)
    rows = load_split(cfg.dataset, "train", [cfg.input_column, cfg.edited_column, cfg.prompt_column])
    if cfg.max_train_samples:
        rows = rows.select(range(min(cfg.max_train_samples, len(rows))))
    if len(rows) == 0:
        raise InstructSDError(f"dataset '{cfg.dataset}' has an empty train split")
    has_tasks = cfg.task_column in rows.column_names
    if cfg.task_weights and not has_tasks:
        raise InstructSDError(f"task_weights needs a '{cfg.task_column}' column in '{cfg.dataset}' (set task_column)")
    tasks = list(rows[cfg.task_column]) if has_tasks else [None] * len(rows)
    weights = task_row_weights(tasks, cfg.task_weights) if cfg.task_weights else None
    if not cfg.aspect_buckets:
        return TrainRows(rows, len(rows), tasks, weights)
    buckets = bucket_set(cfg.bucket_area or cfg.resolution ** 2, cfg.bucket_step)
    assigned = assign_buckets(rows, cfg.input_column, buckets, min_rows=cfg.train_batch_size * world)
    return TrainRows(rows, len(rows), tasks, weights, buckets, assigned)


def training_batches(cfg, data: TrainRows, cache=None, *, rank: int = 0, world: int = 1,
                     agree: Callable[[bool], bool] | None = None) -> Batches:
    """The batch source for this run: streamed pixels, cached latents or map-style pixels."""
    if cfg.streaming:
        return StreamingPairs(data.rows, data.count, size=cfg.resolution, flip=cfg.random_flip, seed=cfg.seed,
                              shuffle_buffer=cfg.shuffle_buffer, input_column=cfg.input_column,
                              edited_column=cfg.edited_column, prompt_column=cfg.prompt_column,
                              task_column=cfg.task_column, center_crop=cfg.center_crop, batch_size=cfg.train_batch_size,
                              rank=rank, world=world, num_workers=cfg.dataloader_num_workers,
                              max_samples=cfg.max_train_samples, agree=agree)
    if cache is not None:
        dataset = CachedPairDataset(cache.latents, data.rows[cfg.prompt_column], data.tasks, flip=cfg.random_flip,
                                    seed=cfg.seed)
    else:
        sizes = None if data.buckets is None else [data.buckets[b] for b in data.assigned]
        dataset = PairDataset(data.rows, size=cfg.resolution, flip=cfg.random_flip, seed=cfg.seed,
                              input_column=cfg.input_column, edited_column=cfg.edited_column,
                              prompt_column=cfg.prompt_column, task_column=cfg.task_column, center_crop=cfg.center_crop,
                              sizes=sizes)
    return MapBatches(dataset, seed=cfg.seed, batch_size=cfg.train_batch_size, rank=rank, world=world,
                      weights=data.weights, num_workers=cfg.dataloader_num_workers, assigned=data.assigned,
                      kinds=[kind_of(t) for t in data.tasks])


# --- map-style: pixels or cached latents ---------------------------------------------------------


class MapBatches:
    """Batches of a map-style dataset: each epoch's order is a seeded permutation (or weighted
    draws), cut into global batches — of one aspect bucket each when ``assigned`` gives each row's
    bucket — and sliced by rank (see train/data.py and train/buckets.py)."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, seed: int, batch_size: int, rank: int, world: int,
                 weights: np.ndarray | None = None, num_workers: int = 0, assigned: np.ndarray | None = None,
                 kinds: Sequence[str] | None = None):
        self.dataset, self.seed, self.batch_size, self.rank, self.world = dataset, seed, batch_size, rank, world
        self.weights, self.num_workers, self.assigned, self.kinds = weights, num_workers, assigned, kinds

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, epoch: int, rank: int) -> list[list[int]]:
        """Process ``rank``'s row indices of each batch of ``epoch``: a pure function of (seed, epoch)."""
        order = epoch_order(len(self.dataset), self.seed, epoch, self.weights)
        if self.assigned is not None:
            return bucket_batches(order, self.assigned, self.batch_size, rank, self.world)
        return rank_batches(order, self.batch_size, rank, self.world)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        self.dataset.set_epoch(epoch)
        batches = self.batches(epoch, self.rank)
        loader = iter(batch_loader(self.dataset, batches[skip:], self.num_workers))
        return refuse_empty_epoch(loader, epoch) if skip == 0 else loader

    def kind_counts(self, epoch: int, batches: int | None = None) -> Counter:
        """Samples of each kind in the first ``batches`` batches of ``epoch``, over all processes."""
        kinds = self.kinds or ["edit"] * len(self.dataset)
        return Counter(kinds[i] for rank in range(self.world) for batch in self.batches(epoch, rank)[:batches]
                       for i in batch)


class PairDataset(torch.utils.data.Dataset):
    """A map-style view of an instruction dataset yielding augmented tensors and prompts.

    A row whose images fail to decode yields ``{"bad": True}``; :func:`collate` drops it and
    the recipe counts it against ``max_bad_fraction``.
    """

    def __init__(self, rows: Dataset, *, size: int, flip: bool, seed: int, input_column: str, edited_column: str,
                 prompt_column: str, task_column: str | None = None, center_crop: bool = False,
                 sizes: Sequence[tuple[int, int]] | None = None):
        self.rows, self.size, self.flip, self.seed, self.center_crop = rows, size, flip, seed, center_crop
        self.sizes = sizes  # per row: its aspect bucket's (width, height); None = the square ``size``
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
            with refuse_bombs():  # datasets decodes the row's images here
                row = self.rows[int(index)]
            if row[src_col] is None or row[tgt_col] is None:
                raise ValueError("empty image cell")
            rng = np.random.default_rng([self.seed, self.epoch, int(index), _AUGMENT])
            size = self.size if self.sizes is None else self.sizes[int(index)]
            source, target, crops = paired_crop(row[src_col], row[tgt_col], size, rng, self.flip, self.center_crop)
        except DECODE_ERRORS as err:
            return {"bad": True, "index": int(index), "error": decode_reason(err)}
        task = row[self.task_column] if self.task_column else None
        prompt = self.instruction(row[prompt_col], task, self.epoch, int(index))
        return {"input_pixels": source, "edited_pixels": target, "crops": crops, "prompt": prompt, "index": int(index),
                "kind": kind_of(task)}


class CachedPairDataset(torch.utils.data.Dataset):
    """The same samples as :class:`PairDataset` with ``center_crop``, read from the latent cache.

    The flip is drawn from the same per-sample stream, so a cached run sees exactly the
    samples the pixel run sees, already encoded.
    """

    def __init__(self, latents, prompts: Sequence[str], tasks: Sequence[str | None], *, flip: bool, seed: int):
        # A Dataset row-aligned with the training rows, or train/cache.py's per-bucket BucketedLatents.
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
                "crops": row[f"crops_{side}"], "prompt": prompt, "index": int(index), "kind": kind_of(self.tasks[index])}


def collate(samples: list[dict]) -> dict:
    """Stack good samples; report the indices of those that failed to decode, and why (``errors``)."""
    good = [s for s in samples if not s.get("bad")]
    out: dict = {"prompts": [s["prompt"] for s in good], "indices": [s["index"] for s in good],
                 "bad": [s["index"] for s in samples if s.get("bad")],
                 "errors": [s.get("error", "failed to decode") for s in samples if s.get("bad")],
                 "kinds": [s.get("kind", "edit") for s in good]}
    for key in ("input_pixels", "edited_pixels", "input_latents", "target_moments", "crops"):
        if good and key in good[0]:
            out[key] = torch.stack([s[key] for s in good])
    return out


def count_skipped(bad_rows: set, batch: dict, rows: int, max_fraction: float, record: Callable[[list], None]) -> None:
    """Count a batch's rows that failed to decode (each row once, however often it is drawn), hand the
    new ones to ``record`` as ``(index, reason)`` (the run's skipped_rows.jsonl), and stop the run
    when every row, or more than ``max_fraction`` of them, failed."""
    new = [(i, why) for i, why in zip(batch["bad"], batch["errors"]) if i not in bad_rows]
    if not new:
        return
    bad_rows.update(i for i, _ in new)
    record(new)
    if len(bad_rows) >= rows:
        raise InstructSDError(f"every one of the {rows} training rows failed to decode (row {new[0][0]}: {new[0][1]}); "
                              "see skipped_rows.jsonl in the run folder, and rebuild the dataset")
    if len(bad_rows) > max_fraction * rows:
        raise InstructSDError(
            f"{len(bad_rows)} of {rows} training images failed to decode (rows {sorted(bad_rows)[:5]}…, "
            f"listed in skipped_rows.jsonl), more than max_bad_fraction={max_fraction}; fix or drop them, "
            "or raise max_bad_fraction")


def refuse_empty_epoch(batches: Iterator[dict], epoch: int) -> Iterator[dict]:
    """Pass ``batches`` through; at the end, refuse an epoch in which no sample decoded (the run
    would otherwise loop over empty epochs for ever)."""
    decoded = False
    for batch in batches:
        decoded = decoded or bool(batch["indices"])
        yield batch
    if not decoded:
        raise InstructSDError(f"no training row of epoch {epoch} could be decoded; see skipped_rows.jsonl in the run "
                              "folder, and rebuild the dataset")


def batch_loader(dataset: torch.utils.data.Dataset, batches: list[list[int]], num_workers: int) -> torch.utils.data.DataLoader:
    """Iterate precomputed index batches (the order is ours, not the DataLoader's)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


# --- streamed parquet shards ------------------------------------------------------------------------


class StreamingPairs:
    """This process's batches of each epoch from a parquet stream, transformed as :class:`PairDataset` does."""

    def __init__(self, stream: IterableDataset, rows: int, *, size: int, flip: bool, seed: int, shuffle_buffer: int,
                 input_column: str, edited_column: str, prompt_column: str, task_column: str | None,
                 center_crop: bool, batch_size: int, rank: int, world: int, num_workers: int = 0,
                 max_samples: int | None = None, agree: Callable[[bool], bool] | None = None):
        if max_samples:
            # Before the shuffle: the first rows in file order, as max_train_samples means for map-style data.
            stream, rows = stream.take(max_samples), min(rows, max_samples)
        if shuffle_buffer:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world) if world > 1 else stream
        self.rows, self.size, self.flip, self.seed, self.center_crop = rows, size, flip, seed, center_crop
        self.columns = (input_column, edited_column, prompt_column)
        self.task_column = task_column if task_column and task_column in (stream.column_names or []) else None
        self.batch_size, self.rank, self.world, self.agree = batch_size, rank, world, agree
        self.instruction = InstructionSource(seed)
        self.counts: dict[int, Counter] = {}  # per epoch: this process's rows of each kind read so far
        # PIL decodes and resizes with the GIL released, so threads keep the order and still overlap.
        self.pool = ThreadPoolExecutor(num_workers) if num_workers else None

    def __len__(self) -> int:
        return self.rows

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        """The batch interface: this process's batches of ``epoch`` from batch ``skip`` on."""
        batches = self.batches(epoch, skip, self.agree)
        return refuse_empty_epoch(batches, epoch) if skip == 0 else batches

    def sample(self, row: dict, epoch: int, k: int) -> dict:
        index = k * self.world + self.rank
        src_col, tgt_col, prompt_col = self.columns
        try:
            rng = np.random.default_rng([self.seed, epoch, index, _AUGMENT])
            source, target, crops = paired_crop(open_image(row[src_col]), open_image(row[tgt_col]), self.size, rng,
                                                self.flip, self.center_crop)
        except DECODE_ERRORS as err:
            return {"bad": True, "index": f"epoch {epoch} sample {index}", "error": decode_reason(err)}
        task = row[self.task_column] if self.task_column else None
        prompt = self.instruction(row[prompt_col], task, epoch, index)
        return {"input_pixels": source, "edited_pixels": target, "crops": crops, "prompt": prompt, "index": index,
                "kind": kind_of(task)}

    def kind_counts(self, epoch: int, batches: int | None = None) -> Counter:
        """This process's rows of each kind read in ``epoch`` (a stream's composition is known as it is read)."""
        return self.counts.get(epoch, Counter())

    def batches(self, epoch: int, skip: int = 0, agree: Callable[[bool], bool] | None = None) -> Iterator[dict]:
        """Batches of ``epoch`` from batch ``skip`` on; a short tail is dropped.

        ``agree(has_batch)`` is true only if every process has a full batch: ranks' streams can
        differ in length, and all must end the epoch together.
        """
        self.stream.set_epoch(epoch)  # reseeds the shard and buffer shuffles with seed + epoch
        rows = iter(self.stream)
        counts = self.counts[epoch] = Counter()
        kind = (lambda row: kind_of(row[self.task_column])) if self.task_column else (lambda row: "edit")
        # Rows consumed before the stop are counted, not decoded.
        k = sum(counts.update([kind(row)]) or 1 for row in itertools.islice(rows, skip * self.batch_size))
        made = 0
        while True:
            raw = list(itertools.islice(rows, self.batch_size))
            full = len(raw) == self.batch_size
            if agree is not None:
                full = agree(full)
            if not full:
                break
            counts.update(kind(row) for row in raw)
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
