"""Frozen encoders, run once: VAE latent moments (both flips) and text embeddings, as datasets on disk.

The VAE and the text encoder never change during training, yet the reference script runs both
on every step. Here they run once, ahead of training (as EDM2's ``dataset_tool.py encode``
does), into ``cache_dir/latents`` and ``cache_dir/text``. The cache stores the latent
*distribution* (mean and log-variance), not a sample, so the target latent is still sampled
afresh each step with the run's generator — the same draws ``latent_dist.sample`` makes — and a
cached run trains on exactly what an uncached one would. A fingerprint of everything that went
in (model files, dataset, resolution, columns) guards reuse across runs.
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
from datasets import Array2D, Array3D, Dataset, Features, Value, load_from_disk
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm

from instructsd.data.images import DECODE_ERRORS, refuse_bombs
from instructsd.errors import InstructSDError
from instructsd.train.data import paired_transform

FORMAT = 1  # bump when the cache layout changes


@dataclass
class LatentCache:
    latents: Dataset  # input_mode_{0,1}, target_moments_{0,1}, ok — one row per training row
    text: dict[str, torch.Tensor]  # prompt -> [L, D] embedding, "" included
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
    for sub in ("vae", "text_encoder", "tokenizer"):
        for f in sorted((path / sub).rglob("*")):
            if f.is_file():
                files[str(f.relative_to(path))] = _file_digest(f)
    return {"files": files}


def cache_fingerprint(cfg, rows: Dataset, prompts: list[str]) -> str:
    key = {
        "format": FORMAT,
        "model": model_fingerprint(cfg.base_model),
        "dataset": [rows._fingerprint, len(rows)],
        "resolution": cfg.resolution,
        "flip": cfg.random_flip,
        "columns": [cfg.input_column, cfg.edited_column, cfg.prompt_column],
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: list[str], device, batch_size: int = 64) -> torch.Tensor:
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out.append(text_encoder(ids)[0].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_latent_rows(vae, rows: Dataset, cfg, device, batch_size: int = 8, progress: bool = True) -> Dataset:
    """Centre-crop every row, encode it unflipped and flipped, keep the distributions' moments."""
    dtype = next(vae.parameters()).dtype
    columns: dict[str, list] = {"input_mode_0": [], "input_mode_1": [], "target_moments_0": [], "target_moments_1": [], "ok": []}
    sides = (False, True) if cfg.random_flip else (False,)
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    latent = cfg.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
    zeros_in = np.zeros((vae.config.latent_channels, latent, latent), np.float32)
    zeros_mom = np.zeros((2 * vae.config.latent_channels, latent, latent), np.float32)

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
    for i in tqdm(range(len(rows)), desc="cache latents", unit="row", disable=not progress, dynamic_ncols=True):
        try:
            with refuse_bombs():
                row = rows[i]
            if row[cfg.input_column] is None or row[cfg.edited_column] is None:
                raise ValueError("empty image cell")
            pair = paired_transform(row[cfg.input_column], row[cfg.edited_column], cfg.resolution, rng, False,
                                    center_crop=True, flipped=False)
        except DECODE_ERRORS:  # the row is marked bad and skipped by every run that reads the cache
            flush()
            for side in (0, 1):
                columns[f"input_mode_{side}"].append(zeros_in)
                columns[f"target_moments_{side}"].append(zeros_mom)
            columns["ok"].append(False)
            continue
        pending.append(pair)
        columns["ok"].append(True)
        if len(pending) == batch_size:
            flush()
    flush()
    shape_in, shape_mom = zeros_in.shape, zeros_mom.shape
    features = Features({
        "input_mode_0": Array3D(shape_in, "float32"), "input_mode_1": Array3D(shape_in, "float32"),
        "target_moments_0": Array3D(shape_mom, "float32"), "target_moments_1": Array3D(shape_mom, "float32"),
        "ok": Value("bool"),
    })
    return Dataset.from_dict(columns, features=features)


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


def build_or_load(cfg, rows: Dataset, parts, device, is_main: bool, wait, progress: bool = True) -> LatentCache:
    """Reuse ``cache_dir`` if its fingerprint matches, else (main process) rebuild it atomically,
    with a progress bar over the rows unless ``progress`` is False."""
    folder = Path(cfg.cache_dir or Path(cfg.output_dir) / "cache")
    prompts = cache_prompts(rows, cfg)
    fingerprint = cache_fingerprint(cfg, rows, prompts)
    stamp = folder / "fingerprint.json"

    def matches() -> bool:
        return stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint

    reused = matches()
    if not reused and is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        vae, text_encoder = parts.vae.to(device), parts.text_encoder.to(device)
        encode_latent_rows(vae, rows, cfg, device, progress=progress).save_to_disk(str(tmp / "latents"))
        embeddings = encode_text(parts.tokenizer, text_encoder, prompts, device)
        Dataset.from_dict({"prompt": prompts, "embedding": list(embeddings.numpy())},
                          features=Features({"prompt": Value("string"),
                                             "embedding": Array2D(tuple(embeddings.shape[1:]), "float32")})
                          ).save_to_disk(str(tmp / "text"))
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
    latents = load_from_disk(str(folder / "latents"))
    text_rows = load_from_disk(str(folder / "text")).with_format("torch")
    text = {p: e for p, e in zip(text_rows["prompt"], text_rows["embedding"])}
    return LatentCache(latents=latents, text=text, folder=folder, reused=reused)
