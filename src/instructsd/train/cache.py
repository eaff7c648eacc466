"""Frozen encoders, run once: VAE latent moments (both flips) and text embeddings, as datasets on disk.

The VAE and the text encoder never change during training, yet the reference script runs both
on every step. Here they run once, ahead of training (as EDM2's ``dataset_tool.py encode``
does), into ``cache_dir/latents`` and ``cache_dir/text``. The cache stores the latent
*distribution* (mean and log-variance), not a sample, so the target latent is still sampled
afresh each step with the run's generator — the same draws ``latent_dist.sample`` makes — and a
cached run trains on exactly what an uncached one would. A fingerprint of everything that went
in (model files, dataset, resolution, columns) guards reuse across runs. Text goes through the
model's backbone (models/backbone.py): for SDXL both encoders' embeddings and the pooled
``text_embeds`` are stored, and each row keeps its original size and centre crop (``crops_0``,
``crops_1`` for the flipped side), which SDXL conditions on.

With ``aspect_buckets`` (train/buckets.py) latents differ in shape between buckets, and datasets'
``Array3D`` needs one shape per column: the cache holds one dataset per bucket,
``latents/{W}x{H}/``, with a ``row`` column naming each entry's training row, read back through
:class:`BucketedLatents` as if it were one row-aligned dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Array3D, Dataset, Features, Sequence, Value, load_from_disk
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm

from instructsd.data.images import DECODE_ERRORS, refuse_bombs
from instructsd.errors import InstructSDError
from instructsd.models.backbone import TextConditioning, backbone_of
from instructsd.train.data import mirror_crop, paired_crop

FORMAT = 2  # bump when the cache layout changes (2: crops_0/1 per row, pooled text for SDXL)


@dataclass
class LatentCache:
    latents: Dataset | BucketedLatents  # input_mode_{0,1}, target_moments_{0,1}, crops_{0,1}, ok — one per training row
    text: dict[str, TextConditioning]  # prompt -> its [L, D] embedding (and SDXL's pooled [P]), "" included
    folder: Path
    reused: bool


def sample_latents(moments: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A draw from the VAE's diagonal Gaussian given its stacked (mean, logvar) moments.

    Uses diffusers' own distribution class, so with the same generator state the draw equals
    ``vae.encode(x).latent_dist.sample(generator)`` bit for bit.
    """
    return DiagonalGaussianDistribution(moments).sample(generator=generator)


def _file_digest(path: Path) -> str:
    """Size plus the first and last MiB: cheap for multi-GB checkpoints, stable across copies."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        if path.stat().st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()


def model_fingerprint(model: str) -> dict:
    """What identifies the frozen encoders: file digests for a local folder, the id for a hub model."""
    path = Path(model)
    if not path.is_dir():
        return {"hub_id": model}
    files = {}
    for sub in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        for f in sorted((path / sub).rglob("*")) if (path / sub).is_dir() else []:
            if f.is_file():
                files[str(f.relative_to(path))] = _file_digest(f)
    if (path / "model_index.json").is_file():  # force_zeros_for_empty_prompt changes SDXL's "" embedding
        files["model_index.json"] = _file_digest(path / "model_index.json")
    return {"files": files}


def cache_fingerprint(cfg, rows: Dataset, prompts: list[str], buckets: list | None = None, assigned=None) -> str:
    key = {
        "format": FORMAT,
        "model": model_fingerprint(cfg.base_model),
        "dataset": [rows._fingerprint, len(rows)],
        "resolution": cfg.resolution,
        "flip": cfg.random_flip,
        "columns": [cfg.input_column, cfg.edited_column, cfg.prompt_column],
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
    }
    if buckets is not None:  # only then: an unbucketed cache keeps its fingerprint
        key["buckets"] = [list(b) for b in buckets]
        key["assigned"] = hashlib.sha256(np.asarray(assigned, np.int64).tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def encode_text(backbone, prompts: list[str], batch_size: int = 64) -> TextConditioning:
    """Every prompt through the backbone's text encoder(s), in batches, as fp32 on the CPU."""
    out = [backbone.encode(prompts[start : start + batch_size]).to("cpu", torch.float32)
           for start in range(0, len(prompts), batch_size)]
    return TextConditioning.stack([row for part in out for row in part.rows()])


@torch.no_grad()
def encode_latent_rows(vae, rows: Dataset, cfg, device, batch_size: int = 8, progress: bool = True,
                       size: tuple[int, int] | None = None, indices: list[int] | None = None) -> Dataset:
    """Centre-crop every row (or those of ``indices``: one aspect bucket's, cropped to its ``size`` =
    (width, height)), encode it unflipped and flipped, keep the distributions' moments."""
    width, height = size or (cfg.resolution, cfg.resolution)
    indices = range(len(rows)) if indices is None else indices
    dtype = next(vae.parameters()).dtype
    columns: dict[str, list] = {"input_mode_0": [], "input_mode_1": [], "target_moments_0": [], "target_moments_1": [],
                                "crops_0": [], "crops_1": [], "ok": []}
    sides = (False, True) if cfg.random_flip else (False,)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    zeros_in = np.zeros((vae.config.latent_channels, height // factor, width // factor), np.float32)
    zeros_mom = np.zeros((2 * vae.config.latent_channels, height // factor, width // factor), np.float32)

    def flush():
        if not pending:
            return
        for side in sides:
            src = torch.stack([p[0] for p in pending])
            tgt = torch.stack([p[1] for p in pending])
            if side:
                src, tgt = src.flip(-1), tgt.flip(-1)
            src_moments = vae.encode(src.to(device, dtype)).latent_dist.parameters.float().cpu()
            tgt_moments = vae.encode(tgt.to(device, dtype)).latent_dist.parameters.float().cpu()
            c = vae.config.latent_channels
            columns[f"input_mode_{int(side)}"] += list(src_moments[:, :c].numpy())
            columns[f"target_moments_{int(side)}"] += list(tgt_moments.numpy())
        if not cfg.random_flip:
            columns["input_mode_1"] += columns["input_mode_0"][-len(pending):]
            columns["target_moments_1"] += columns["target_moments_0"][-len(pending):]
        pending.clear()

    rng = np.random.default_rng(0)  # unused by a centre crop without flip; required by the signature
    for i in tqdm(indices, desc="cache latents", unit="row", disable=not progress, dynamic_ncols=True):
        try:
            with refuse_bombs():
                row = rows[i]
            if row[cfg.input_column] is None or row[cfg.edited_column] is None:
                raise ValueError("empty image cell")
            *pair, crops = paired_crop(row[cfg.input_column], row[cfg.edited_column], size or cfg.resolution, rng,
                                       False, center_crop=True, flipped=False)
        except DECODE_ERRORS:  # the row is marked bad and skipped by every run that reads the cache
            flush()
            for side in (0, 1):
                columns[f"input_mode_{side}"].append(zeros_in)
                columns[f"target_moments_{side}"].append(zeros_mom)
                columns[f"crops_{side}"].append([0] * 6)
            columns["ok"].append(False)
            continue
        pending.append(pair)
        columns["crops_0"].append(crops.tolist())
        columns["crops_1"].append((mirror_crop(crops) if cfg.random_flip else crops).tolist())
        columns["ok"].append(True)
        if len(pending) == batch_size:
            flush()
    flush()
    shape_in, shape_mom = zeros_in.shape, zeros_mom.shape
    features = Features({
        "input_mode_0": Array3D(shape_in, "float32"), "input_mode_1": Array3D(shape_in, "float32"),
        "target_moments_0": Array3D(shape_mom, "float32"), "target_moments_1": Array3D(shape_mom, "float32"),
        "crops_0": Sequence(Value("int64"), length=6), "crops_1": Sequence(Value("int64"), length=6), "ok": Value("bool"),
    })
    if isinstance(indices, range):
        return Dataset.from_dict(columns, features=features)
    features["row"] = Value("int64")
    return Dataset.from_dict({**columns, "row": list(indices)}, features=features)


class BucketedLatents:
    """Per-bucket latent datasets read as one dataset indexed by training row."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.where: dict[int, tuple[int, int]] = {}
        for p, part in enumerate(parts):
            self.where.update({int(row): (p, offset) for offset, row in enumerate(part["row"])})

    def with_format(self, kind: str) -> BucketedLatents:
        formatted = BucketedLatents.__new__(BucketedLatents)
        formatted.parts, formatted.where = [part.with_format(kind) for part in self.parts], self.where
        return formatted

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index: int) -> dict:
        part, offset = self.where[int(index)]
        return self.parts[part][offset]


def _bucket_folder(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def encode_buckets(vae, rows: Dataset, cfg, device, buckets, assigned, folder: Path, progress: bool) -> None:
    """One latent dataset per used bucket under ``folder``, each cropped to its bucket."""
    for b, size in enumerate(buckets):
        indices = [int(i) for i in np.flatnonzero(np.asarray(assigned) == b)]
        if indices:
            encode_latent_rows(vae, rows, cfg, device, progress=progress, size=size,
                               indices=indices).save_to_disk(str(folder / _bucket_folder(size)))


def load_buckets(folder: Path) -> BucketedLatents:
    return BucketedLatents([load_from_disk(str(part)) for part in sorted(folder.iterdir()) if part.is_dir()])


def cache_prompts(rows: Dataset, cfg) -> list[str]:
    """Every instruction training can use: the rows' own, every training paraphrase of tasks whose
    rows defer their instruction, and the empty prompt (the dropped condition)."""
    prompts = set(rows[cfg.prompt_column]) | {""}
    if "" in set(rows[cfg.prompt_column]) and cfg.task_column in rows.column_names:
        from instructsd.data.instructions import all_instructions, split_task

        deferred = {t for t, p in zip(rows[cfg.task_column], rows[cfg.prompt_column]) if not p}
        for task in deferred:
            # Compound tasks ("deblur+denoise") combine templates combinatorially; those few
            # prompts are encoded when first drawn instead (see TextEmbeddings).
            if len(split_task(task)) == 1:
                prompts |= set(all_instructions(task))
    return sorted(prompts)


def build_or_load(cfg, rows: Dataset, parts, device, is_main: bool, wait, progress: bool = True, buckets=None,
                  assigned=None) -> LatentCache:
    """Reuse ``cache_dir`` if its fingerprint matches, else (main process) rebuild it atomically,
    with a progress bar over the rows unless ``progress`` is False. With aspect ``buckets`` (each
    row's index in ``assigned``) the latents are stored per bucket."""
    folder = Path(cfg.cache_dir or Path(cfg.output_dir) / "cache")
    prompts = cache_prompts(rows, cfg)
    fingerprint = cache_fingerprint(cfg, rows, prompts, buckets, assigned)
    stamp = folder / "fingerprint.json"

    def matches() -> bool:
        return stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint

    reused = matches()
    if not reused and is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        vae = parts.vae.to(device)
        for encoder in parts.text_encoders():
            encoder.to(device)
        if buckets is None:
            encode_latent_rows(vae, rows, cfg, device, progress=progress).save_to_disk(str(tmp / "latents"))
        else:
            encode_buckets(vae, rows, cfg, device, buckets, assigned, tmp / "latents", progress)
        text = encode_text(backbone_of(parts), prompts)
        columns = {"prompt": prompts, "embedding": list(text.embeds.numpy())}
        features = {"prompt": Value("string"), "embedding": Array2D(tuple(text.embeds.shape[1:]), "float32")}
        if text.pooled is not None:
            columns["pooled"] = list(text.pooled.numpy())
            features["pooled"] = Sequence(Value("float32"), length=text.pooled.shape[1])
        Dataset.from_dict(columns, features=Features(features)).save_to_disk(str(tmp / "text"))
        (tmp / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint, "rows": len(rows),
                                                          "prompts": len(prompts)}, indent=2))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    wait()
    if not matches():
        raise InstructSDError(f"latent cache '{folder}' does not match this run; delete it or set cache_dir to a new folder")
    latents = load_from_disk(str(folder / "latents")) if buckets is None else load_buckets(folder / "latents")
    text_rows = load_from_disk(str(folder / "text")).with_format("torch")
    pooled = text_rows["pooled"] if "pooled" in text_rows.column_names else [None] * len(text_rows)
    text = {p: TextConditioning(e, q) for p, e, q in zip(text_rows["prompt"], text_rows["embedding"], pooled)}
    return LatentCache(latents=latents, text=text, folder=folder, reused=reused)
