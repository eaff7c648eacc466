"""Pre-train a tiny instruction-following base: the miniature of InstructPix2Pix's checkpoint.

No real checkpoint can be downloaded where this project is built and tested, so the post's
story ("fine-tuning an instruction-following model adapts faster than starting from plain
SD") needs a small base of our own. The recipe, every stage resumable inside ``OUT/work``:

    data      the builder makes restoration pairs (several tasks) from the photos that ship
              with scikit-image, split by photo: validation photos are never trained on
    model     tiny components (BPE tokenizer, CLIP text encoder, autoencoder, 8-channel UNet);
              the autoencoder is fitted to the training photos, the text encoder to tell the
              training wordings' edits apart (models/text_fit.py)
    train     the normal trainer (``train.loop.train``) with checkpoints, so an
              interrupted run continues where it stopped; its config is the tiny-cpu preset
              with typed changes (``dataclasses.replace``)
    score     held-out photos: base vs identity per task, seen vs held-out paraphrases
    ship      the final pipeline in ``OUT/model`` with a model card and ``metrics.json``

What makes tiny diffusion learn fast (measured in benchmarks/RESULTS.md) is in the
defaults of :class:`PretrainConfig`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from diffusers import DDPMScheduler

from instructsd.config import from_dict, load_config, opt, save_config, to_dict, typed_fields
from instructsd.data.build import build_dataset
from instructsd.data.load import load_split
from instructsd.data.card import SAMPLES_LICENSE
from instructsd.data.samples import GROUPS, sample_images
from instructsd.data.tasks import edit_class
from instructsd.edit.editor import SCHEDULERS, EditSettings, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.eval.compare import edit_rows, score_model, score_outputs
from instructsd.eval.following import confusion_markdown, instruction_following
from instructsd.eval.metrics import summarize
from instructsd.eval.rows import paraphrases, prepare_rows
from instructsd.eval.suite import MetricSuite
from instructsd.files import atomic_dir, atomic_write_text
from instructsd.models.autoencoder import fit_autoencoder
from instructsd.models.identity_init import identity_init
from instructsd.models.loading import resolve_model
from instructsd.models.text_fit import fit_text_encoder
from instructsd.models.tiny import TinySpec, build_tiny_components, save_pipeline
from instructsd.train.config import TrainConfig, ValidationSettings
from instructsd.train.loop import train
from instructsd.train.validation import read_curves

PRETRAIN_TASKS = ("denoise", "lowlight", "dehaze", "whitebalance",
                  "exposure", "contrast", "saturation", "black_and_white", "hue")
"""Tasks the base learns: restoration and global photo operations (issue 15). ``sepia`` is left
out so the quickstart can teach an unseen one (cartoonize too: at 32 px its teacher draws edge
noise); deblur, derain and jpeg too: at 32 px their degradations cost the identity only 1-3 dB
less than the autoencoder's own reconstruction error, so there is little to learn at this size;
flip, vignette, grain and sharpen are spatial, which a 32 px UNet this small does not learn well;
temperature, tint, vibrance, highlights and shadows change a 32 px crop by less than the
autoencoder's own error (identity scores 34-38 dB on temperature, against 30.5 dB reconstruction)."""
HOLDOUT = ("chelsea", "coffee", "motorcycle", "rocket")
"""Held-out colour photos (groups; ``motorcycle`` is the stereo pair): never trained on by the base,
nor by the quickstart, so every score on them is on unseen photos."""
LEGACY_RECIPE = {"photos": "skimage-15", "holdout": [], "vae_norm_groups": None, "timestep_spacing": "leading",
                 "text_fit_steps": 0}
"""What a record written before these keys existed used (the first tiny base)."""


@dataclass
class PretrainConfig:
    """Everything that decides the base model; saved with it so a run can be repeated."""

    tasks: tuple[str, ...] = opt(PRETRAIN_TASKS, "Tasks the base learns (names from `instructsd data tasks`).")
    size: int = opt(32, "Image side in pixels: the model's native size.")
    crops_per_image: int = opt(48, "Square crops per source photo (each used once per task).")
    val_fraction: float = opt(0.15, "Share of source photos held out (split by photo, the builder's rule) when no holdout is named.")
    photos: str = opt("extended", "Bundled photo set (data/samples.py): extended | skimage-15.")
    holdout: tuple[str, ...] = opt(HOLDOUT, "Photos (groups) held out for validation by name; empty: a val_fraction draw.")
    unet_channels: tuple[int, ...] = opt((32, 64, 64), "UNet width per resolution level.")
    unet_norm_groups: Optional[int] = opt(1, "GroupNorm groups in the UNet (null: min(32, first width)); identity init needs 1.")
    identity_init: bool = opt(True, 'Start the UNet as "return the input image" (models/identity_init.py).')
    init_from: Optional[str] = opt(None, "Continue pre-training from this base (folder or 'instructsd/tiny-base'): its UNet, "
                                   "autoencoder, text encoder and tokenizer; the size and width keys must match it. "
                                   "null: fresh components (autoencoder fitted, UNet identity-initialised).")
    vae_channels: tuple[int, ...] = opt((32,), "Autoencoder width per level; one level = factor 1 (latents at pixel resolution).")
    vae_norm_groups: Optional[int] = opt(1, "GroupNorm groups in the autoencoder (null: min(32, first width)); 1 keeps each "
                                         "crop's absolute colour (per-channel groups lose it on unseen colour photos).")
    text_dim: int = opt(64, "Width of the CLIP text encoder and of the UNet's cross-attention.")
    text_fit_steps: int = opt(300, "Steps fitting the random text encoder to tell the training instructions' edits "
                              "apart before the UNet trains (models/text_fit.py); 0: leave it random. "
                              "With init_from the base's own encoder is kept.")
    vae_steps: int = opt(1500, "Autoencoder fitting steps.")
    vae_anchor: float = opt(1.0, "Weight pulling the autoencoder's latents towards the image itself (image-like latents).")
    train_steps: int = opt(3000, "UNet training steps.")
    train: dict = opt({
        "prediction_type": "sample",
        "learning_rate": 3e-4,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 100,
        "train_batch_size": 32,
        "gradient_accumulation_steps": 1,
        "use_ema": True,
        "ema_decay": 0.999,
    }, "TrainConfig overrides on top of the tiny-cpu preset.")
    timestep_spacing: Literal["leading", "linspace", "trailing"] = opt(
        "trailing", "How the base's sampler spaces its steps (saved in its scheduler config): 'trailing' starts at "
        "the last training step, so one DDIM step is a whole edit; 'leading' (diffusers' old default) makes a "
        "one-step edit from pure noise at t=1.")
    seed: int = opt(0, "The one seed: data, weights, noise, evaluation.")
    eval_per_task: int = opt(16, "Held-out crops scored per task for the card.")
    settings: list = opt([
        {"scheduler": "ddim", "num_inference_steps": 20, "image_guidance_scale": 1.0, "guidance_scale": 1.0},
        {"scheduler": "ddim", "num_inference_steps": 20, "image_guidance_scale": 1.5, "guidance_scale": 7.0},
        {"scheduler": "ddim", "num_inference_steps": 20, "image_guidance_scale": 1.0, "guidance_scale": 3.0},
        {"scheduler": "ddim", "num_inference_steps": 10, "image_guidance_scale": 1.0, "guidance_scale": 1.0},
        # The edit as one clean-latent prediction from t=999: best by 1.2 dB at step 750 of a 9-task
        # base, level with 20 steps at step 2,000 (benchmarks/RESULTS.md, "Sampler steps").
        {"scheduler": "ddim", "num_inference_steps": 1, "image_guidance_scale": 1.0, "guidance_scale": 1.0},
        {"scheduler": "ddim", "num_inference_steps": 2, "image_guidance_scale": 1.0, "guidance_scale": 1.0},
    ], "Candidate inference settings (EditSettings fields); the best mean PSNR on the small check subset is "
       "the one the card uses and reports on the full held-out set.")

    def __post_init__(self) -> None:
        # Checked now, not after the data and the autoencoder fit the training would follow.
        typed_fields(TrainConfig, self.train, source="the pretrain recipe's 'train' mapping")


def recipe_from_record(config: dict) -> PretrainConfig:
    """A base's recipe from its pretrain.json ``config``; keys added since it was written take the
    values the first base was made with, not today's defaults."""
    return from_dict(PretrainConfig, {**LEGACY_RECIPE, **config})


def build_photos(cfg: PretrainConfig, out: Path, *, tasks, crops_per_image: int, progress: bool = True) -> Path:
    """A dataset of ``tasks`` on the recipe's photos, split as the base's data (same holdout, seed, rule):
    the base's pre-training data, its check subset, and the quickstart's data are all this."""
    if not (out / "dataset_dict.json").exists():
        build_dataset(sample_images(cfg.photos), out, tasks=tasks, size=cfg.size, crops_per_image=crops_per_image,
                      val_fraction=cfg.val_fraction, seed=cfg.seed, progress=progress, groups=GROUPS,
                      holdout=cfg.holdout, source_licenses=[SAMPLES_LICENSE])
    return out


def build_data(cfg: PretrainConfig, out: Path, progress: bool = True) -> Path:
    """The multi-task dataset (skipped when ``out`` already holds a complete one)."""
    return build_photos(cfg, out, tasks=cfg.tasks, crops_per_image=cfg.crops_per_image, progress=progress)


def build_init_model(cfg: PretrainConfig, data: Path, out: Path, in_channels: int = 8, progress: bool = True) -> dict:
    """Identity-initialised UNet, autoencoder fitted to the training photos, text encoder fitted to the
    training wordings (``text_fit_steps``); saved to ``out``. With ``init_from``, a copy of that base."""
    stats_file = out / "autoencoder.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    if cfg.init_from:
        return _continue_from(cfg.init_from, out, stats_file, cfg.train.get("prediction_type") or "epsilon",
                              cfg.timestep_spacing)
    spec = TinySpec(unet_channels=tuple(cfg.unet_channels), vae_channels=tuple(cfg.vae_channels),
                    unet_norm_groups=cfg.unet_norm_groups, vae_norm_groups=cfg.vae_norm_groups,
                    text_dim=cfg.text_dim, sample_size=cfg.size)
    tok_dir = out.parent / f".{out.name}-tokenizer"
    unet, vae, text_encoder, tokenizer, scheduler = build_tiny_components(spec, in_channels=in_channels, seed=cfg.seed,
                                                                          tokenizer_dir=tok_dir)
    rows = load_split(data, "train", ["edited_image", "task", "edit_prompt", "edit_params"])
    # Fit on clean targets of restoration tasks (the photos themselves), never on validation photos;
    # only the target column is decoded.
    photos = [image for image, task in zip(rows["edited_image"], rows["task"]) if task != "cartoonize"]
    stats = fit_autoencoder(vae, photos, steps=cfg.vae_steps, size=cfg.size, seed=cfg.seed, anchor_weight=cfg.vae_anchor,
                            progress=progress)
    if cfg.text_fit_steps:
        # Training-split wordings only: the held-out paraphrases the card scores stay unseen.
        labels = [edit_class(task, params) for task, params in zip(rows["task"], rows["edit_params"])]
        stats["text_encoder_fit"] = fit_text_encoder(text_encoder, tokenizer, rows["edit_prompt"], labels,
                                                     steps=cfg.text_fit_steps, seed=cfg.seed, progress=progress)
    if cfg.identity_init:
        identity_init(unet, scaling_factor=vae.config.scaling_factor)
    scheduler.register_to_config(prediction_type=cfg.train.get("prediction_type") or "epsilon",
                                 timestep_spacing=cfg.timestep_spacing)
    save_pipeline(out, unet, vae, text_encoder, tokenizer, scheduler, overwrite=True)
    shutil.rmtree(tok_dir, ignore_errors=True)
    atomic_write_text(stats_file, json.dumps(stats, indent=2, default=float))
    return stats


def _continue_from(base: str, out: Path, stats_file: Path, prediction_type: str, spacing: str) -> dict:
    """Copy ``base`` as the starting model (its card and record stay behind), with a training scheduler."""
    source = Path(resolve_model(base))
    if not (source / "model_index.json").is_file():
        raise InstructSDError(f"init_from '{base}' is not a model folder (no model_index.json)")
    record = json.loads((source / "pretrain.json").read_text()) if (source / "pretrain.json").is_file() else {}
    with atomic_dir(out, overwrite=True) as tmp:
        for part in ("unet", "vae", "text_encoder", "tokenizer", "model_index.json"):
            (shutil.copytree if (source / part).is_dir() else shutil.copy2)(source / part, tmp / part)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")  # the base ships its sampler
        scheduler.register_to_config(prediction_type=prediction_type, timestep_spacing=spacing)
        scheduler.save_pretrained(tmp / "scheduler")
        index = json.loads((tmp / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", "DDPMScheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    stats = {**record.get("autoencoder", {}), "continued_from": str(base)}
    atomic_write_text(stats_file, json.dumps(stats, indent=2, default=float))
    return stats


def train_config(cfg: PretrainConfig, init: Path, data: Path, out: Path, **changes) -> TrainConfig:
    """The TrainConfig of the pre-training run: the tiny-cpu preset, this recipe's sizes, then
    ``cfg.train`` (typed by TrainConfig's fields), then ``changes``, each layer over the last."""
    tcfg = replace(load_config(TrainConfig, "tiny-cpu"), base_model=str(init), dataset=str(data), output_dir=str(out),
                   resolution=cfg.size, max_train_steps=cfg.train_steps, seed=cfg.seed, cache_latents=True)
    tcfg = replace(tcfg, **typed_fields(TrainConfig, cfg.train, source="the pretrain recipe's 'train' mapping"))
    return replace(tcfg, **changes)


def validation_changes(settings: EditSettings) -> dict:
    """TrainConfig's in-training validation settings, set to edit as ``settings`` does."""
    return {"validation": ValidationSettings(
        num_inference_steps=settings.num_inference_steps, image_guidance_scale=float(settings.image_guidance_scale),
        guidance_scale=float(settings.guidance_scale), scheduler=settings.scheduler)}


def score(pipe, rows, settings, *, per_task: int, seed: int = 0, batch_size: int = 16) -> dict:
    """PSNR/SSIM per task for model (seen and held-out paraphrases) and identity.

    Seen: the row's own instruction (a training paraphrase). Held-out: a paraphrase from the
    task's held-out bank, never used in training. The rows, the paraphrase rule, the scores and
    the per-task means are evaluation's own (``eval.rows``, ``eval.compare``, ``eval.metrics.summarize``).
    """
    examples, suite = prepare_rows(rows, per_task=per_task, seed=seed), MetricSuite.headline()
    held = paraphrases(examples, "held_out", seed)
    scored = [*score_model(pipe, examples, settings, suite, batch_size=batch_size),
              *score_outputs("model_held_out", edit_rows(pipe, examples, settings, held, batch_size=batch_size),
                             examples, suite, texts=held)]
    cells = {(r["task"], r["method"]): {"psnr": r["psnr"], "ssim": r["ssim"], "n": r["n"]} for r in summarize(scored)}
    return {task: {method: cells[task, method] for method in ("model", "model_held_out", "identity")}
            for task in dict.fromkeys(e.task for e in examples)}


CHECK_CROPS = 2


def check_subset(cfg: PretrainConfig, pipe, folder: Path, settings: dict, progress: bool = False) -> dict:
    """Scores on a small subset anyone can rebuild in seconds (same photos, split and seed,
    ``CHECK_CROPS`` crops per photo, held out of training like the full evaluation), so a test
    can confirm the shipped weights reproduce them."""
    build_photos(cfg, folder, tasks=cfg.tasks, crops_per_image=CHECK_CROPS, progress=progress)
    rows = load_split(folder, "validation", ["input_image", "edited_image", "edit_prompt", "task"])
    return {"crops_per_image": CHECK_CROPS, "settings": settings,
            "metrics": score(pipe, rows, EditSettings(**settings), per_task=None, seed=cfg.seed)}


def mean_psnr(metrics: dict, method: str = "model") -> float:
    return float(np.mean([m[method]["psnr"] for m in metrics.values()]))


def targets_met(metrics: dict, following: dict | None = None) -> dict:
    """Issue #7's and #15's targets: ≥ 1 dB over identity on ≥ 3 tasks; held-out paraphrases within
    0.5 dB; instruction-following accuracy ≥ 90% (when the base learned two or more photo operations)."""
    gains = {t: m["model"]["psnr"] - m["identity"]["psnr"] for t, m in metrics.items()}
    paraphrase_gap = {t: m["model"]["psnr"] - m["model_held_out"]["psnr"] for t, m in metrics.items()}
    return {
        "gain_over_identity_db": gains,
        "tasks_beating_identity_by_1db": sorted(t for t, g in gains.items() if g >= 1.0),
        "seen_minus_held_out_db": paraphrase_gap,
        "beats_identity_on_3": sum(g >= 1.0 for g in gains.values()) >= 3,
        "paraphrases_within_half_db": all(abs(g) <= 0.5 for g in paraphrase_gap.values()),
        **({"following_accuracy": following["accuracy"], "following_at_least_90": following["accuracy"] >= 0.9}
           if following else {}),
    }


def format_metrics(metrics: dict) -> str:
    lines = ["| task | identity | base (seen wording) | base (held-out wording) | gain |", "|---|---|---|---|---|"]
    for task, m in metrics.items():
        gain = m["model"]["psnr"] - m["identity"]["psnr"]
        lines.append(f"| {task} | {m['identity']['psnr']:.2f} / {m['identity']['ssim']:.3f} | "
                     f"{m['model']['psnr']:.2f} / {m['model']['ssim']:.3f} | "
                     f"{m['model_held_out']['psnr']:.2f} / {m['model_held_out']['ssim']:.3f} | {gain:+.2f} dB |")
    return "\n".join(lines)


def pretrain_tiny(out: str | Path, cfg: PretrainConfig = PretrainConfig(), *, progress: bool = True,
                  command: str = "") -> Path:
    """Run (or resume) every stage; returns ``OUT/model``, the finished base."""
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "pretrain.json"
    if saved.exists() and json.loads(saved.read_text())["config"] != json.loads(json.dumps(asdict(cfg))):
        raise InstructSDError(f"'{out}' holds a pre-training run with other settings ({saved}); use another OUT "
                              "or delete it to start over")
    atomic_write_text(saved, json.dumps({"config": asdict(cfg)}, indent=2))
    save_config(cfg, work / "pretrain.yaml")  # the same recipe, readable and reusable: pretrain-tiny OUT key=value
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    data = build_data(cfg, work / "data", progress=progress)
    vae_stats = build_init_model(cfg, data, work / "init", progress=progress)
    tcfg = train_config(
        cfg, work / "init", data, work / "train",
        checkpoint_every=250, keep_last=1, resume="auto", overwrite=True,  # continue a killed run; else replace its debris
        # A validation curve on held-out photos (per task) while it trains, edited as the first candidate settings.
        validation_every=max(1, cfg.train_steps // 5), num_validation_images=4, report_to="none",
        **validation_changes(EditSettings(**cfg.settings[0])))
    result = train(tcfg, progress=progress)
    # Training time adds up over interrupted and resumed invocations.
    timing_file = work / "train_seconds.json"
    spent = json.loads(timing_file.read_text())["seconds"] if timing_file.exists() else 0.0
    spent = (spent if result.resumed_from is not None else 0.0) + result.wall_seconds
    atomic_write_text(timing_file, json.dumps({"seconds": spent}))
    curve = read_curves(work / "train" / "validation.jsonl", "psnr")

    pipe = load_pipeline(result.final_dir, device=device)
    # Settings are chosen on the small check subset, then reported on the (larger) held-out set.
    search = [check_subset(cfg, pipe, work / "check-data", settings, progress=progress) for settings in cfg.settings]
    check = max(search, key=lambda c: mean_psnr(c["metrics"]))
    rows = load_split(data, "validation", ["input_image", "edited_image", "edit_prompt", "task"])
    metrics = score(pipe, rows, EditSettings(**check["settings"]), per_task=cfg.eval_per_task, seed=cfg.seed)
    # Does it do the photo edit it is asked for? (issue 15; {} when fewer than two photo-op tasks)
    following = instruction_following(pipe, prepare_rows(rows, per_task=cfg.eval_per_task, seed=cfg.seed),
                                      EditSettings(**check["settings"]), seed=cfg.seed, max_inputs=24)
    checks = targets_met(metrics, following)
    wall = time.time() - started
    record = {
        "command": command, "config": asdict(cfg), "train_config": json.loads(json.dumps(to_dict(tcfg), default=str)),
        "autoencoder": vae_stats, "settings": check["settings"], "metrics": metrics,
        "settings_search": [{"settings": c["settings"], "mean_psnr": mean_psnr(c["metrics"])} for c in search], "targets": checks, "check": check,
        "wall_seconds_this_run": wall, "train_seconds": spent, "validation_curve": curve, "device": _device_name(device),
        "validation_photos": sorted(set(rows["source"])), "following": following,
    }
    model = out / "model"
    with atomic_dir(model, overwrite=True) as tmp:
        shutil.copytree(result.final_dir, tmp, dirs_exist_ok=True)
        ship_scheduler(tmp, check["settings"]["scheduler"])
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=2, default=float))
        (tmp / "README.md").write_text(model_card(record))
    return model


def ship_scheduler(folder: Path, name: str) -> None:
    """Save the card's sampler as the folder's scheduler, so stock diffusers and instructsd's
    'auto' sampler both use it (same noise schedule and prediction type as training)."""
    training = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    sampler = SCHEDULERS[name].from_config(training.config)
    shutil.rmtree(folder / "scheduler")
    sampler.save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(sampler).__name__]
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def fmt_settings(settings: dict) -> str:
    return (f"{settings['scheduler']} {settings['num_inference_steps']} steps, image {settings['image_guidance_scale']:g} / "
            f"text {settings['guidance_scale']:g}")


def model_card(record: dict) -> str:
    """The base model's README: what it is, how it was made, what it scores."""
    cfg, checks = record["config"], record["targets"]
    return f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [instructsd, instruct-pix2pix, tiny]
---
# instructsd tiny instruction-following base

A miniature InstructPix2Pix checkpoint ({cfg['size']}×{cfg['size']} px) made by `instructsd model pretrain-tiny`
on this project's own data, so the post's "fine-tune an instruction-following base" story
can be run on a CPU with nothing downloaded. It loads in stock diffusers:

```python
from diffusers import StableDiffusionInstructPix2PixPipeline
pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("<this folder>")
```

## How it was made
- command: `{record['command']}`
- seed {cfg['seed']}; tasks: {', '.join(cfg['tasks'])} (sepia deliberately left out: the quickstart teaches it)
- data: the bundled photos (`{cfg.get('photos', 'skimage-15')}` set, data/samples.py), {cfg['crops_per_image']} crops
  per photo, split by photo; validation photos ({', '.join(record['validation_photos'])}) never seen in training
{f"- continued pre-training of {record['autoencoder']['continued_from']} (its UNet, autoencoder, text encoder and tokenizer)" if record['autoencoder'].get('continued_from') else ''}
- components: UNet {cfg['unet_channels']}, autoencoder {cfg['vae_channels']} fitted {cfg['vae_steps']} steps →
  {record['autoencoder']['psnr']:.1f} dB reconstruction PSNR, CLIP text encoder width {cfg['text_dim']}{text_fit_line(record)}, BPE tokenizer
- training: {cfg['train_steps']} steps, {', '.join(f'{k}={v}' for k, v in cfg['train'].items())}
- wall time {record['train_seconds'] / 60:.1f} min of training ({record['wall_seconds_this_run'] / 60:.1f} min for the
  last invocation, all stages) on {record['device']}

## Held-out photos, native size
Settings: {', '.join(f'{k}={v}' for k, v in record['settings'].items())} (the best of
{len(record['settings_search'])} candidates on the small check subset, mean PSNR:
{'; '.join(f"{fmt_settings(c['settings'])} → {c['mean_psnr']:.2f} dB" for c in record['settings_search'])}).
PSNR (dB) / SSIM, up to {cfg['eval_per_task']} crops per task.

{format_metrics(record['metrics'])}

- beats identity by ≥ 1 dB on {len(checks['tasks_beating_identity_by_1db'])} tasks
  ({', '.join(checks['tasks_beating_identity_by_1db']) or 'none'})
- held-out paraphrases within 0.5 dB of seen ones on every task: {checks['paraphrases_within_half_db']}
  (largest gap {max(abs(g) for g in checks['seen_minus_held_out_db'].values()):.2f} dB)
{following_section(record.get('following') or {})}

{curve_table(record.get('validation_curve') or {})}

`pretrain.json` beside this card holds the full record (configs, per-task numbers).
"""


def text_fit_line(record: dict) -> str:
    fit = record["autoencoder"].get("text_encoder_fit")
    if not fit:
        return ""
    return (f" fitted {fit['steps']} steps to tell the {fit['classes']} training edits apart from their "
            f"{fit['prompts']} training wordings ({fit['accuracy_pooled']:.0%} of them classified right)")


def following_section(following: dict) -> str:
    """The instruction-following confusion matrix on the card (issue 15), against its 90% target."""
    if not following:
        return ""
    met = "meets" if following["accuracy"] >= 0.9 else f"misses by {0.9 - following['accuracy']:.0%}"
    return f"""
## Instruction following (photo operations, held-out photos)
Each held-out input edited once per photo-operation task, with an instruction stating a drawn amount; the
output counts as the task whose exact ground truth it is closest to (or identity). Target ≥ 90%: {met}.

{confusion_markdown(following)}
"""


def curve_table(curve: dict) -> str:
    """The in-training validation curve as a markdown table (held-out photos, per task)."""
    if not curve:
        return ""
    steps = [step for step, _ in next(iter(curve.values()))]
    lines = ["## Learning curve (in-training validation, 4 held-out crops per task, PSNR dB)", "",
             "| task | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for task, points in curve.items():
        lines.append(f"| {task} | " + " | ".join(f"{v:.2f}" for _, v in points) + " |")
    return "\n".join(lines)
