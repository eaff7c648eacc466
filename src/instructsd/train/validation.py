"""In-training validation: edit a fixed validation subset through the project's one edit function.

Every ``validation_every`` steps the current UNet (EMA weights when kept) is wrapped with the
frozen parts in the stock pipeline and :func:`instructsd.edit.editor.edit_images` edits the
same images with the same seeds, so the numbers are comparable across steps and with
``instructsd eval``. PSNR/SSIM go to ``validation.jsonl`` and the run's trackers (``log``, a
:class:`instructsd.train.tracking.RunLog`); an input | edit | target grid to ``validation/step-N.png``. Sampling uses its own seeded generators, so
validating never changes the training run's random streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from instructsd.edit.editor import edit_images, pipeline_from_parts
from instructsd.eval.metrics import psnr, ssim
from instructsd.eval.report import save_grid


@dataclass
class ValidationSet:
    inputs: list
    targets: list
    prompts: list[str]
    tasks: list[str]


def fixed_subset(rows: Dataset, cfg) -> ValidationSet:
    """``num_validation_images`` rows of each task spread over the split (the same choice as
    ``instructsd eval``); rows with no instruction get the task's canonical one."""
    from instructsd.eval.evaluate import instruction_for, select_per_task

    tasks = rows[cfg.task_column] if cfg.task_column in rows.column_names else ["all"] * len(rows)
    picked = select_per_task(rows, cfg.num_validation_images, cfg.task_column)
    sub = rows.select(picked)
    picked_tasks = [tasks[i] for i in picked]
    prompts = [instruction_for(p, t) for p, t in zip(sub[cfg.prompt_column], picked_tasks)]
    return ValidationSet(list(sub[cfg.input_column]), list(sub[cfg.edited_column]), prompts, picked_tasks)


def validate(step: int, unet, parts, scheduler, data: ValidationSet, out: Path, log, cfg,
             progress: bool = True) -> dict[str, float]:
    """Edit the subset (a progress bar unless ``progress`` is False), score it against the targets,
    log the scores and a grid."""
    was_training = unet.training
    unet.eval()
    pipe = pipeline_from_parts(unet, parts.vae, parts.text_encoder, parts.tokenizer, scheduler)
    settings = cfg.validation.edit_settings()
    with tqdm(total=len(data.inputs), desc=f"validate (step {step})", leave=False, disable=not progress) as bar:
        edits = edit_images(pipe, data.inputs, data.prompts, settings, seeds=list(range(len(data.inputs))),
                            progress=bar.update)
    unet.train(was_training)
    size = lambda im: (im.size[0] // 8 * 8, im.size[1] // 8 * 8)  # noqa: E731 (edit_images rounds to multiples of 8)
    targets = [t.convert("RGB").resize(size(t)) if t.size != size(t) else t.convert("RGB") for t in data.targets]
    values: dict[str, float] = {}
    for task in sorted(set(data.tasks)):
        idx = [i for i, t in enumerate(data.tasks) if t == task]
        values[f"val/{task}/psnr"] = float(np.mean([psnr(edits[i], targets[i]) for i in idx]))
        values[f"val/{task}/ssim"] = float(np.mean([ssim(edits[i], targets[i]) for i in idx]))
    values["val/psnr"] = float(np.mean([psnr(e, t) for e, t in zip(edits, targets)]))
    values["val/ssim"] = float(np.mean([ssim(e, t) for e, t in zip(edits, targets)]))
    grid = save_grid(out / "validation" / f"step-{step}.png",
                     [[i.convert("RGB"), e, t] for i, e, t in zip(data.inputs, edits, targets)], ["input", "edit", "target"])
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
