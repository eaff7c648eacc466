"""One experiment recipe: data → fine-tune each start in stages (validating after each) → compare.

    data (built from photos, or an existing dataset)
    for each start model:  stage 1 … stage K  (train steps_per_stage, then score the validation split)
    compare: every fine-tuned model (+ the untouched start models) vs identity and ground truth
    report.html: the comparison, with the validation curves of every start side by side

Validation curves come from stages: each stage continues from the previous stage's weights
with the same config and a new seed, then edits the same validation rows with the same seeds.
A stage restarts the optimizer (AdamW moments), which a single run would keep; with the
constant learning rate the post uses this changes little, and it lets the same recipe score
any metric of the suite at each point.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from instructsd.config import load_config, opt, save_config, to_dict, typed_fields
from instructsd.data.build import build_dataset
from instructsd.data.images import find_images, load_image
from instructsd.data.load import load_split
from instructsd.data.samples import sample_images
from instructsd.edit.editor import EditSettings, default_device, load_pipeline
from instructsd.edit.guidance import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, guidance_problem
from instructsd.errors import InstructSDError
from instructsd.eval.compare import IDENTITY, model_labels, run_compare, score_model
from instructsd.eval.rows import prepare_rows
from instructsd.eval.suite import MetricSuite
from instructsd.models.autoencoder import fit_autoencoder
from instructsd.models.tiny import TinySpec, build_tiny_components, save_pipeline
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

TINY_PREFIX = "tiny:"


@dataclasses.dataclass
class ExperimentConfig:
    """Every key an experiment reads; see the shipped YAMLs in ``experiments/`` beside this file."""

    # --- what and where --------------------------------------------------------------------
    title: str = opt("instructsd experiment", "Report title.")
    output_dir: str = opt("runs/experiments/run", "Run folder: data/, models, train/, report.html, metrics.json.")
    # --- data ------------------------------------------------------------------------------
    dataset: str = opt("", "An existing dataset folder (from `instructsd data build`); empty = build one from `images`.")
    images: str = opt("skimage", "Photos to build the dataset from: a folder, or 'skimage' for the photos scikit-image ships.")
    tasks: list = opt(["denoise", "lowlight", "cartoonize"], "Tasks of the built dataset.")
    size: int = opt(64, "Side in pixels of the built dataset's images.")
    crops_per_image: int = opt(4, "Crops per photo when building the dataset.")
    # --- models and training ----------------------------------------------------------------
    starts: dict = opt({"from-ip2p": "tiny:8"}, "Start models {label: hub id, folder, or tiny:8 / tiny:4 for a tiny random model built here}.")
    include_pretrained: bool = opt(False, "Also score each start model untouched (needs 8-channel starts).")
    tiny_spec: Optional[dict] = opt(None, "TinySpec fields for tiny:N starts (e.g. {unet_channels: [16, 32]}); null = defaults.")
    fit_vae_steps: int = opt(0, "Fit the tiny starts' shared autoencoder on the training photos for this many steps first (0 = keep it random).")
    train_preset: str = opt("tiny-cpu", "Training preset (or YAML file) each stage starts from.")
    train_overrides: dict = opt({}, "TrainConfig keys set on top of the preset (base_model, dataset, output_dir, max_train_steps and seed are set here).")
    stages: int = opt(3, "Validation points per start: the training is split into this many stages.")
    steps_per_stage: int = opt(50, "Optimizer steps per stage.")
    # --- evaluation -------------------------------------------------------------------------
    eval_per_task: Optional[int] = opt(4, "Validation rows per task, spread over the split (null = all).")
    eval_steps: int = opt(20, "Sampling steps for every edit.")
    image_guidance: float = opt(DEFAULT_IMAGE_GUIDANCE, "Image guidance scale (the post's 1.5).")
    guidance: float = opt(DEFAULT_GUIDANCE, "Text guidance scale (the post's 7.0).")
    sweep: list = opt([], "Image-guidance scales for the CLIP trade-off curve (needs clip).")
    instruction_sets: list = opt([], "Extra instruction sets for the generalisation table: seen, held_out, canonical.")
    clip: str = opt("none", "CLIP model for CLIP metrics (hub id or folder), or none.")
    dino: str = opt("none", "DINO ViT model for the DINO score, or none.")
    lpips: str = opt("none", "LPIPS backbone (needs the lpips package), or none.")
    teacher: str = opt("", "A reference model scored beside the others as 'teacher' (empty = the ground truth is the reference).")
    device: str = opt("", "cuda, mps or cpu (empty = best available).")
    seed: int = opt(0, "Seed for data, training (stage k uses seed + k) and editing (row i uses seed + i).")

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InstructSDError(f"invalid experiment config: {msg}")

        need(isinstance(self.starts, dict) and len(self.starts) > 0, "starts must map labels to models, e.g. {from-ip2p: tiny:8}")
        for label, model in self.starts.items():
            need(isinstance(model, str) and model != "", f"starts.{label} must be a model id or folder")
            if model.startswith(TINY_PREFIX):
                need(model in ("tiny:8", "tiny:4"), f"starts.{label}: '{model}' must be tiny:8 or tiny:4")
        need(isinstance(self.train_overrides, dict), "train_overrides must be a mapping of TrainConfig keys")
        fixed = {"base_model", "dataset", "output_dir", "max_train_steps", "seed"} & set(self.train_overrides)
        need(not fixed, f"train_overrides may not set {', '.join(sorted(fixed))}: the experiment sets them")
        typed_fields(TrainConfig, self.train_overrides, source="the experiment's train_overrides")  # before any training
        need(self.stages >= 1 and self.steps_per_stage >= 1, "stages and steps_per_stage must be >= 1")
        need(self.eval_steps >= 1, "eval_steps must be >= 1")
        # Guidance is checked now, not after the training it would be scored after (issue 11, item 7).
        problems = [guidance_problem(self.image_guidance, self.guidance, ("image_guidance", "guidance")),
                    *(guidance_problem(scale, self.guidance, ("sweep", "guidance")) for scale in self.sweep)]
        problem = next((p for p in problems if p), None)
        need(problem is None, str(problem))


def experiment_configs() -> dict[str, Path]:
    """Shipped experiments: {name: YAML path}."""
    folder = resources.files("instructsd.recipes") / "experiments"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_experiment(name: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A shipped experiment's name or a YAML path, with key=value overrides on top."""
    shipped = experiment_configs()
    path = shipped.get(str(name), Path(name))
    if not path.is_file():
        raise InstructSDError(f"unknown experiment '{name}'; use one of {', '.join(sorted(shipped))} or a YAML file")
    return load_config(ExperimentConfig, path, overrides)


# ----------------------------------------------------------------------------
# The recipe


def _build_data(cfg: ExperimentConfig, out: Path, progress: bool) -> Path:
    if cfg.dataset:
        return Path(cfg.dataset)
    if not cfg.images:
        raise InstructSDError("experiment needs data: pass images=<folder of photos> (or images=skimage) or dataset=<folder>")
    if cfg.images == "skimage":
        sources = sample_images()
    else:
        folder = Path(cfg.images)
        sources = [(str(p.relative_to(folder).with_suffix("")), load_image(p)) for p in find_images(folder)]
    data = out / "data"
    if not data.exists():
        build_dataset(sources, data, tasks=tuple(cfg.tasks), size=cfg.size, crops_per_image=cfg.crops_per_image,
                      seed=cfg.seed, progress=progress)
    return data


def _tiny_starts(cfg: ExperimentConfig, out: Path, data: Path, progress: bool) -> dict[str, str]:
    """Build the tiny:N starts, sharing one text encoder and autoencoder (as SD 1.5 and InstructPix2Pix do).

    Same seed, same components: only the UNets differ (8 vs 4 input channels). The autoencoder
    is fitted once on the training photos when ``fit_vae_steps`` > 0, like the quickstart's.
    """
    tiny = {label: model for label, model in cfg.starts.items() if model.startswith(TINY_PREFIX)}
    folders = {label: out / "models" / label for label in tiny}
    if not tiny or all(f.exists() for f in folders.values()):
        return {label: str(f) for label, f in folders.items()}
    spec = TinySpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.tiny_spec or {}).items()})
    shared_vae = None
    for label, model in tiny.items():
        unet, vae, text_encoder, tokenizer, scheduler = build_tiny_components(
            spec, in_channels=int(model[len(TINY_PREFIX):]), seed=cfg.seed, tokenizer_dir=out / "models" / f".tok-{label}")
        if shared_vae is None:
            if cfg.fit_vae_steps > 0:
                rows = load_split(data, "train", ["input_image", "edited_image"])
                photos = [row[col] for row in rows for col in ("input_image", "edited_image")]
                fit_autoencoder(vae, photos, steps=cfg.fit_vae_steps, size=min(cfg.size, spec.sample_size), seed=cfg.seed,
                                progress=progress)
            shared_vae = vae
        save_pipeline(folders[label], unet, shared_vae, text_encoder, tokenizer, scheduler, overwrite=True)
        shutil.rmtree(out / "models" / f".tok-{label}", ignore_errors=True)  # the tokenizer now lives in the model folder
    return {label: str(f) for label, f in folders.items()}


def train_config(cfg: ExperimentConfig, base: str, data: Path, out: Path, stage: int) -> TrainConfig:
    """Stage ``stage``'s TrainConfig: the preset, then ``train_overrides`` (typed by TrainConfig's
    fields), then what the experiment decides (which model, data, folder, budget and seed)."""
    tcfg = dataclasses.replace(load_config(TrainConfig, cfg.train_preset),
                               **typed_fields(TrainConfig, cfg.train_overrides, source="the experiment's train_overrides"))
    return dataclasses.replace(tcfg, base_model=str(base), dataset=str(data), output_dir=str(out),
                               max_train_steps=cfg.steps_per_stage, seed=cfg.seed + stage,
                               overwrite=True)  # each run of the experiment retrains its own stage folders


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """Run the experiment; returns the path of its report.html."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "experiment.yaml")
    device = cfg.device or default_device()
    data = _build_data(cfg, out, progress)
    rows = load_split(data, "validation", ["input_image", "edited_image", "edit_prompt"])
    settings = EditSettings(num_inference_steps=cfg.eval_steps, image_guidance_scale=cfg.image_guidance,
                            guidance_scale=cfg.guidance)
    built = _tiny_starts(cfg, out, data, progress)
    starts = {label: built.get(label, model) for label, model in cfg.starts.items()}
    model_labels([f"{k}={v}" for k, v in starts.items()])  # refuses reserved labels (identity, ground_truth, teacher)

    # --- train each start in stages, validating after each ---------------------------------
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {"psnr": {}, "ssim": {}}
    finals: dict[str, str] = {}
    for label, base in starts.items():
        current = base
        for stage in range(cfg.stages):
            result = train(train_config(cfg, current, data, out / "train" / label / f"stage-{stage + 1}", stage),
                           progress=progress)
            current = str(result.final_dir)
            scored = score_model(load_pipeline(current, device=device),
                                 prepare_rows(rows, per_task=cfg.eval_per_task, seed=cfg.seed), settings)
            step = (stage + 1) * cfg.steps_per_stage
            for metric in curves:
                for method, name in (("model", label), ("identity", IDENTITY)):
                    values = [r[metric] for r in scored if r["method"] == method]
                    series = curves[metric].setdefault(name, [])
                    if name != IDENTITY or not any(s == step for s, _ in series):
                        series.append((step, float(np.mean(values))))
        finals[label] = current

    # --- compare the results ----------------------------------------------------------------
    # With the untouched starts in the table, name both sides: "ip2p-finetuned" vs "ip2p-pretrained".
    tuned = {label: f"{label}-finetuned" if cfg.include_pretrained else label for label in finals}
    models = {tuned[label]: path for label, path in finals.items()}
    if cfg.include_pretrained:
        models.update({f"{label}-pretrained": starts[label] for label in starts})
    curves = {metric: {tuned.get(name, name): points for name, points in series.items()} for metric, series in curves.items()}
    suite = MetricSuite.load(cfg.clip, cfg.dino, cfg.lpips, device=device)
    notes = [f"Each start trained {cfg.stages} stages x {cfg.steps_per_stage} steps ({cfg.train_preset} preset + "
             f"{json.dumps(cfg.train_overrides)}); validation curves score the same rows with the same seeds after each stage.",
             *(["'-pretrained' models are the start models untouched; '-finetuned' ones are trained from them."]
               if cfg.include_pretrained else [])]
    result = run_compare(models, data, out, teacher=cfg.teacher or None, settings=settings, per_task=cfg.eval_per_task,
                         seed=cfg.seed, suite=suite, sweep=cfg.sweep, instruction_sets=cfg.instruction_sets,
                         device=device, title=cfg.title, notes=notes, config={"experiment": to_dict(cfg)},
                         curves=curves, progress=progress)
    return result.report
