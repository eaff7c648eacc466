"""Resumable checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is ``output_dir/checkpoints/step-NNNNNNN/`` with the trained weights (the whole
UNet, or only the trainable tensors for LoRA), the EMA, optimizer and LR-scheduler states,
``state.json`` (step, epoch, data position, the losses so far) and one ``rng-rank{r}.pt``
per process (torch, CUDA, numpy, python and the run's noise generator). The data order is a
pure function of (seed, epoch), so the data position is just two integers — for a streamed
dataset too, whose per-epoch stream is a pure function of (seed, epoch, rank): resuming re-reads
the epoch and drops ``position × train_batch_size`` rows. ``state.json`` also records what that
position depends on (streaming, batch size, seed, shuffle buffer), and a resume that changed it is
refused rather than silently continuing elsewhere. Written into a temp folder and renamed, so a
crash mid-save never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from instructsd.errors import InstructSDError

PATTERN = re.compile(r"^step-(\d+)$")


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and PATTERN.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


# What a run writes into its folder; a new run replaces these (with overwrite=true) and nothing else,
# so a shared latent cache (cache/) or the user's own files there survive.
RUN_FILES = ("config.yaml", "losses.jsonl", "validation.jsonl", "validation", "checkpoints", "final", "lora",
             "tensorboard", "ranks", "wandb", "skipped_rows.jsonl", "best", "best.json", "report.html", "buckets.json",
             "data_mix.json")


def previous_run(out: Path) -> list[str]:
    """What shows that ``out`` holds a run that trained (empty when it holds none).

    A run that died before its first step leaves only config.yaml and empty logs: nothing to lose.
    """
    out = Path(out)
    if not out.is_dir():
        return []
    evidence = []
    for name in ("losses.jsonl", "validation.jsonl", "checkpoints", "final", "lora"):
        path = out / name
        if path.is_file() and path.stat().st_size > 0 or path.is_dir() and any(path.iterdir()):
            evidence.append(name)
    return evidence


def resolve(resume: str, out: Path, overwrite: bool = False) -> Path | None:
    """The checkpoint to continue from, or None for a fresh start; refuses anything that would lose a run.

    ``resume`` = '' (fresh), 'latest' (the newest checkpoint; there must be one), 'auto' (the newest
    checkpoint if there is one, else fresh) or a checkpoint folder. A fresh start into a folder that
    holds another run is refused unless ``overwrite`` (which replaces that run's files), except that
    'auto' restarts a run that was interrupted before its first checkpoint (no checkpoint, no
    ``final``/``lora``): the same command run again after a kill must not need another flag.
    """
    out = Path(out)
    found = checkpoints(out)
    if resume == "latest" and not found:
        raise InstructSDError(
            f"resume=latest but '{out / 'checkpoints'}' holds no checkpoint (nothing was saved yet: set checkpoint_every); "
            f"use resume=auto to start fresh when there is none, or resume='' to start fresh")
    if resume in ("latest", "auto") and found:
        return found[-1]
    if resume not in ("", "latest", "auto"):
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise InstructSDError(f"resume='{resume}' is not a checkpoint folder (no state.json); use resume=latest, "
                                  f"resume=auto or a {out / 'checkpoints' / 'step-N'} folder")
        return path
    earlier = previous_run(out)
    if earlier and resume == "auto" and not {"final", "lora"} & set(earlier):
        # An interrupted run that stopped before its first checkpoint: there is nothing to continue
        # from, so "run the same command again" starts it again (its partial logs are replaced).
        print(f"resume=auto: '{out}' holds a run that stopped before its first checkpoint; starting it again from step 0")
        return None
    if earlier and not overwrite:
        raise InstructSDError(
            f"'{out}' already holds a run ({', '.join(earlier)}); continue it with resume=latest, replace it with "
            f"overwrite=true, or choose another output_dir")
    return None


def clear_previous_run(out: Path) -> None:
    """Delete the files an earlier run wrote into ``out`` (only those: see RUN_FILES)."""
    for name in RUN_FILES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def rng_state(noise_gen: torch.Generator) -> dict:
    """Every random stream, as tensors and plain Python values only, so it loads with
    ``torch.load(weights_only=True)``: numpy's state tuple holds an ndarray, stored as a tensor."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "noise": noise_gen.get_state(),
    }


def set_rng_state(state: dict, noise_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = (numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                 numpy["cached_gaussian"])
    np.random.set_state(numpy)
    random.setstate(state["python"])
    noise_gen.set_state(state["noise"])


def load_state(path: Path, trust_pickles: bool = False):
    """``torch.load`` of a checkpoint file, refusing anything but tensors and plain values.

    A checkpoint folder may come from someone else; a pickle in it could run code on resume
    (issue 17), so only ``trust_pickles`` (``trust_checkpoint_pickles=true``) lifts the restriction.
    """
    try:
        return torch.load(path, weights_only=not trust_pickles, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise InstructSDError(
            f"'{path}' holds Python objects beyond tensors and plain values, which could run code when loaded; "
            f"nothing was loaded. If you wrote this checkpoint yourself (an older instructsd stored numpy's RNG "
            f"state this way) and trust it, resume with trust_checkpoint_pickles=true") from err


def data_position(cfg, epoch: int, position: int) -> dict:
    """Where the data stream stands, and the config keys that decide what that position means."""
    layout = {"streaming": cfg.streaming, "train_batch_size": cfg.train_batch_size, "seed": cfg.seed}
    if cfg.streaming:
        layout.update(shuffle_buffer=cfg.shuffle_buffer, max_train_samples=cfg.max_train_samples)
    if cfg.aspect_buckets:  # only then, so checkpoints from before buckets still resume
        layout.update(aspect_buckets=True, bucket_area=cfg.bucket_area or cfg.resolution ** 2, bucket_step=cfg.bucket_step)
    return {"epoch": epoch, "position": position, "rows_read": position * cfg.train_batch_size, "data_layout": layout}


def check_data_position(state: dict, cfg, folder: Path) -> None:
    """Refuse to resume where a changed key would put the same position on other rows."""
    saved = state.get("data_layout")
    if saved is None:  # written before the layout was recorded
        return
    now = data_position(cfg, 0, 0)["data_layout"]
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(saved)) if saved.get(k) != now.get(k)]
    if changed:
        raise InstructSDError(
            f"checkpoint '{folder}' was written with other data settings ({'; '.join(changed)}); its data position "
            f"(epoch {state['epoch']}, batch {state['position']}) would point at other rows. Resume with the same "
            f"settings, or start fresh (resume='')")


def trained_tensors(unet: torch.nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """All UNet weights for full fine-tuning; only the trainable ones (adapters, conv_in) for LoRA."""
    if lora:
        tensors = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    else:
        tensors = unet.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save(out: Path, step: int, *, accelerator, unet, optimizer, lr_scheduler, ema, noise_gen, state: dict, lora: bool,
         keep_last: int) -> Path:
    """Write checkpoint ``step`` from every process (collective: all ranks must call it)."""
    root = Path(out) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    torch.save(rng_state(noise_gen), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trained_tensors(accelerator.unwrap_model(unet), lora), str(tmp / "unet.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "num_processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last:
            for old in checkpoints(out)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(folder: Path, *, accelerator, unet, optimizer, lr_scheduler, ema, noise_gen, lora: bool,
         trust_pickles: bool = False) -> dict:
    """Restore a checkpoint into the freshly built parts; returns its ``state.json``."""
    state = json.loads((folder / "state.json").read_text())
    if state["num_processes"] != accelerator.num_processes:
        raise InstructSDError(
            f"checkpoint '{folder}' was written by {state['num_processes']} process(es), this run has "
            f"{accelerator.num_processes}; resume with the same number of processes (data order and RNG are per rank)"
        )
    model = accelerator.unwrap_model(unet)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "unet.safetensors")), strict=False)
    if unexpected or (missing and not lora):
        raise InstructSDError(f"checkpoint '{folder}' does not fit this model (lora_rank or base_model changed?)")
    # Every file is read before any is applied, so a refused file leaves the fresh parts untouched.
    rng_file = folder / f"rng-rank{accelerator.process_index}.pt"
    optimizer_state, scheduler_state, rng = (load_state(folder / name, trust_pickles)
                                             for name in ("optimizer.pt", "lr_scheduler.pt", rng_file.name))
    ema_state = load_state(folder / "ema.pt", trust_pickles) if ema is not None and (folder / "ema.pt").is_file() else None
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(scheduler_state)
    if ema is not None:
        if not (folder / "ema.pt").is_file():
            raise InstructSDError(f"checkpoint '{folder}' has no EMA; resume with use_ema=false or start fresh")
        ema.load_state_dict(ema_state)
    set_rng_state(rng, noise_gen)
    return state
