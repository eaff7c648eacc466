"""In-training validation: edit a fixed validation subset through the project's one edit function.

Every ``validation_every`` steps the current UNet (EMA weights when kept) is wrapped with the
frozen parts in the stock pipeline and :func:`instructsd.edit.editor.edit_images` edits the
same images with the same seeds. The rows are ``instructsd eval``'s (``eval.rows``), scored and
averaged per task as it does (``eval.compare.score_outputs``, ``eval.metrics.summarize``), so the
numbers are comparable across steps and with ``instructsd eval --seed 0``. PSNR/SSIM go to ``validation.jsonl`` and the run's trackers (``log``, a
:class:`instructsd.train.tracking.RunLog`); an input | edit | target grid to ``validation/step-N.png``. Sampling uses its own seeded generators, so
validating never changes the training run's random streams.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from instructsd.data.load import Columns
from instructsd.edit.editor import pipeline_from_components
from instructsd.eval.compare import edit_rows, score_outputs
from instructsd.eval.metrics import ALL_TASKS, summarize
from instructsd.eval.report import save_grid
from instructsd.eval.rows import Example, prepare_rows
from instructsd.eval.suite import MetricSuite


def fixed_subset(rows: Dataset, cfg) -> list[Example]:
    """``num_validation_images`` rows of each task spread over the split: ``instructsd eval``'s rows
    (``eval.rows.prepare_rows``, base seed 0), so the numbers are comparable."""
    return prepare_rows(rows, per_task=cfg.num_validation_images, columns=Columns.of(cfg))


def validate(step: int, unet, parts, scheduler, data: list[Example], out: Path, log, cfg,
             progress: bool = True) -> dict[str, float]:
    """Edit the subset (a progress bar unless ``progress`` is False), score it against the targets,
    log the scores and a grid."""
    was_training = unet.training
    unet.eval()
    pipe = pipeline_from_components(parts, unet, scheduler)
    settings = cfg.validation.edit_settings()
    with tqdm(total=len(data), desc=f"validate (step {step})", leave=False, disable=not progress) as bar:
        edits = edit_rows(pipe, data, settings, batch_size=1, progress=bar.update)
    unet.train(was_training)
    # The same per-image rows and per-task means as `instructsd eval`: val/TASK/psnr, and val/psnr over all rows.
    values: dict[str, float] = {}
    for row in summarize(score_outputs("model", edits, data, MetricSuite.headline())):
        prefix = "val" if row["task"] == ALL_TASKS else f"val/{row['task']}"
        values.update({f"{prefix}/psnr": row["psnr"], f"{prefix}/ssim": row["ssim"]})
    grid = save_grid(out / "validation" / f"step-{step}.png",
                     [[e.source, edit, e.target] for e, edit in zip(data, edits)], ["input", "edit", "target"])
    log.scalars(step, values)
    log.image(step, grid)
    return values


def read_curves(path: str | Path, metric: str = "psnr") -> dict[str, list[tuple[int, float]]]:
    """``validation.jsonl`` as curves: {task or "all": [(step, value), ...]} for ``metric``."""
    path = Path(path)
    if not path.exists():
        return {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in map(json.loads, path.read_text().splitlines()):
        for key, value in record.items():
            parts = key.split("/")
            if parts[0] == "val" and parts[-1] == metric:
                curves.setdefault(parts[1] if len(parts) == 3 else "all", []).append((record["step"], value))
    return curves
