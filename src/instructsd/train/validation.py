"""In-training validation: edit a fixed validation subset through the project's one edit function.

Every ``validation_every`` steps the current UNet (EMA weights when kept) is wrapped with the
frozen parts in the stock pipeline and :func:`instructsd.edit.editor.edit_images` edits the
same images with the same seeds. The rows are ``instructsd eval``'s (``eval.rows``), scored and
averaged per task as it does (``eval.compare.score_outputs``, ``eval.metrics.summarize``), so the
numbers are comparable across steps and with ``instructsd eval --seed 0``. Sampling uses its own
seeded generators, so validating never changes the training run's random streams.

Each validation writes (issue 16):

- ``validation.jsonl`` and the run's trackers (``log``, a :class:`instructsd.train.tracking.RunLog`):
  ``val/[TASK/]METRIC`` for PSNR/SSIM and the edit-aware metrics of ``eval.edit_metrics``
  (``identity_rate``, ``preservation``, ``edit_strength``; CLIP and LPIPS ones when
  ``validation.clip`` / ``validation.lpips`` name a model), and ``val/collapsed`` (1 when the
  identity rate flags a collapsed model, which is also printed as a warning);
- ``validation/step-N.png``, an input | edit | target grid;
- with ``validation.sweep``, ``validation/sweep-step-N.json`` and ``.png``: the dual-guidance sweep
  (``eval.guidance_sweep``);
- with ``validation.best_metric``, ``best.json`` (the best validation so far, never a collapsed
  one) and ``best/unet.safetensors`` (its trained weights, for ``validation.final_is_best``);
- ``report.html`` (train/run_report.py): every validation's curves and sweeps so far.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from instructsd.data.load import Columns
from instructsd.edit.editor import EditSettings, pipeline_from_components
from instructsd.errors import InstructSDError
from instructsd.eval.compare import IDENTITY, edit_rows, score_outputs
from instructsd.eval.edit_metrics import collapse_note
from instructsd.eval.guidance_sweep import run_sweep, write_sweep
from instructsd.eval.metrics import ALL_TASKS, LOWER_IS_BETTER, METRICS, summarize
from instructsd.eval.report import save_grid
from instructsd.eval.rows import Example, prepare_rows
from instructsd.eval.suite import MetricSuite, disabled
from instructsd.files import atomic_write_bytes, atomic_write_text

BEST_FILE = "best.json"
BEST_WEIGHTS = Path("best") / "unet.safetensors"

Edit = Callable[..., list]  # edit(settings, progress=None): the subset's outputs at these settings


@dataclass
class ValidationSet:
    """What every validation of a run reuses: the rows, the metric suite (its networks loaded once,
    each pair's edit mask computed once) and the identity baseline's scores."""

    rows: list[Example]
    suite: MetricSuite
    baseline: list[dict]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Outcome:
    values: dict[str, float]  # what went to validation.jsonl
    best_step: int | None  # the best validation so far by validation.best_metric (None: no pick)


def fixed_subset(rows: Dataset, cfg) -> list[Example]:
    """``num_validation_images`` rows of each task spread over the split: ``instructsd eval``'s rows
    (``eval.rows.prepare_rows``, base seed 0), so the numbers are comparable."""
    return prepare_rows(rows, per_task=cfg.num_validation_images, columns=Columns.of(cfg))


def validation_suite(cfg, device: str = "cpu") -> MetricSuite:
    """PSNR, SSIM and the edit-aware metrics, plus CLIP / LPIPS metrics when ``validation.clip`` / ``.lpips`` name one."""
    v = cfg.validation
    if disabled(v.clip) and disabled(v.lpips):
        return MetricSuite.headline()
    suite = replace(MetricSuite.load(v.clip, None, v.lpips, device=device), pixel=tuple(METRICS))
    suite.notes = [n.replace("--clip", "validation.clip").replace("--lpips", "validation.lpips")
                   for n in suite.notes if not n.startswith("dino")]
    return suite


def validation_set(rows: Dataset, cfg, device: str = "cpu") -> ValidationSet:
    """The fixed subset, its suite and the identity baseline; refuses a best_metric the suite cannot compute."""
    examples = fixed_subset(rows, cfg)
    suite = validation_suite(cfg, device)
    for note in suite.notes:
        print(f"note: validation: {note}")
    metric = cfg.validation.best_metric
    if metric and metric not in suite.names:
        raise InstructSDError(f"validation.best_metric '{metric}' is not a metric validation computes here; use one of "
                              f"{', '.join(suite.names)} (CLIP/LPIPS metrics need validation.clip / validation.lpips)")
    return ValidationSet(examples, suite, score_outputs(IDENTITY, [e.source for e in examples], examples, suite))


def validate(step: int, unet, parts, scheduler, data: ValidationSet, out: Path, log, cfg,
             progress: bool = True) -> dict[str, float]:
    """Edit the subset with the current UNet (a progress bar unless ``progress`` is False) and record it
    (:func:`record`); keeps the UNet's weights when they are the best so far."""
    was_training = unet.training
    unet.eval()
    pipe = pipeline_from_components(parts, unet, scheduler)

    def edit(settings: EditSettings, progress=None) -> list:
        return edit_rows(pipe, data.rows, settings, batch_size=1, progress=progress)

    try:
        outcome = record(step, edit, data, out, log, cfg, progress)
    finally:
        unet.train(was_training)
    if outcome.best_step == step:
        save_best_weights(unet, out, step)
    return outcome.values


def record(step: int, edit: Edit, data: ValidationSet, out: Path, log, cfg, progress: bool = False) -> Outcome:
    """Score the edits ``edit`` makes of the subset, log them and the grid, flag a collapse, run the sweep,
    pick the best validation and rewrite the run's report."""
    from instructsd.train.run_report import write_run_report

    out = Path(out)
    settings = cfg.validation.edit_settings()
    with tqdm(total=len(data.rows), desc=f"validate (step {step})", leave=False, disable=not progress) as bar:
        edits = edit(settings, progress=bar.update)
    scored = score_outputs("model", edits, data.rows, data.suite, scale=settings.image_guidance_scale)
    keys = data.suite.names
    summary = summarize(data.baseline + scored, metric_keys=keys)
    # The same per-image rows and per-task means as `instructsd eval`: val/TASK/psnr, and val/psnr over all rows.
    values: dict[str, float] = {}
    for row in summary:
        if row["method"] == "model":
            prefix = "val" if row["task"] == ALL_TASKS else f"val/{row['task']}"
            values.update({f"{prefix}/{k}": row[k] for k in keys})
    note = collapse_note("the model", values["val/identity_rate"], f" at step {step}")
    values["val/collapsed"] = float(note is not None)
    if note:
        tqdm.write(f"warning: {note}")
    grid = save_grid(out / "validation" / f"step-{step}.png",
                     [[e.source, im, e.target] for e, im in zip(data.rows, edits)], ["input", "edit", "target"])
    log.scalars(step, values)
    log.image(step, grid)
    v = cfg.validation
    if v.sweep:
        points = run_sweep(edit, data.rows, settings, data.suite, v.sweep_text, v.sweep_image)
        write_sweep(out / "validation", step, points, settings, data.suite)
    best = pick_best(read_records(out / "validation.jsonl"), v.best_metric) if v.best_metric else None
    if best is not None:
        atomic_write_text(out / BEST_FILE, json.dumps({**best, "weights": str(BEST_WEIGHTS)}, indent=2) + "\n")
    write_run_report(out, cfg, summary, keys, step, data.suite.notes)
    return Outcome(values, None if best is None else best["step"])


# --- the best validation ------------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict]:
    """``validation.jsonl``'s records, oldest first (none when there is no file)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def pick_best(records: list[dict], metric: str) -> dict | None:
    """The best validation by ``val/METRIC`` (lower is better for ``eval.metrics.LOWER_IS_BETTER``; the
    earliest on a tie), skipping those flagged as collapsed: a model returning its input can score a high
    PSNR on subtle edits, and must never be picked for it. None when no validation qualifies."""
    key = f"val/{metric}"
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    usable = [r for r in records if key in r and not r.get("val/collapsed")]
    if not usable:
        return None
    best = max(usable, key=lambda r: (sign * r[key], -r["step"]))
    return {"metric": metric, "step": best["step"], "value": best[key],
            "skipped_collapsed": [r["step"] for r in records if r.get("val/collapsed")]}


def save_best_weights(unet: torch.nn.Module, out: Path, step: int) -> Path:
    """The trained parameters (EMA ones during validation, when kept) of the best validation."""
    tensors = {n: p.detach().to("cpu", torch.float32).contiguous() for n, p in unet.named_parameters() if p.requires_grad}
    return atomic_write_bytes(Path(out) / BEST_WEIGHTS, save_safetensors(tensors, metadata={"step": str(step)}))


def load_best_weights(unet: torch.nn.Module, out: Path) -> int | None:
    """Put the best validation's weights into ``unet`` (for ``validation.final_is_best``); the step they
    come from, or None (with a note, keeping ``unet``'s weights) when there is no best to load."""
    out = Path(out)
    best = json.loads((out / BEST_FILE).read_text()) if (out / BEST_FILE).is_file() else None
    path = out / BEST_WEIGHTS
    if best is None or not path.is_file():
        print("note: validation.final_is_best: no validation qualified as best (none ran, or every one collapsed); "
              "final/ holds the last step's weights")
        return None
    data = path.read_bytes()
    from safetensors import safe_open  # noqa: PLC0415 -- only for the header's metadata

    with safe_open(str(path), "pt") as fh:
        saved_step = int(fh.metadata().get("step", -1))
    if saved_step != best["step"]:
        print(f"note: validation.final_is_best: best.json names step {best['step']} but {path} holds step {saved_step} "
              "(a resumed run picked an earlier validation whose weights were not kept); final/ holds the last step's weights")
        return None
    tensors = load_safetensors(data)
    params = dict(unet.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise InstructSDError(f"{path} holds weights this UNet lacks ({missing[0]}…); it comes from another model: "
                              "delete it or set validation.final_is_best=false")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name]))
    return saved_step


def read_curves(path: str | Path, metric: str = "psnr") -> dict[str, list[tuple[int, float]]]:
    """``validation.jsonl`` as curves: {task or "all": [(step, value), ...]} for ``metric``."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_records(path):
        for key, value in record.items():
            parts = key.split("/")
            if parts[0] == "val" and parts[-1] == metric:
                curves.setdefault(parts[1] if len(parts) == 3 else "all", []).append((record["step"], value))
    return curves
