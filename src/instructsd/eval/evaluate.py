"""Score a model's edits against ground truth, beside the do-nothing baseline.

The identity baseline (the input returned unchanged) is what every low-level task must beat:
a denoiser that scores below its own noisy input has learned nothing useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset
from PIL import Image
from tqdm.auto import tqdm

from instructsd.edit.editor import EditSettings, edit_images, fit_size
from instructsd.eval.metrics import METRICS


@dataclass
class EvalResult:
    """Per-image metric rows and a few example images per task for the report."""

    rows: list[dict] = field(default_factory=list)
    examples: dict[str, list[dict]] = field(default_factory=dict)


def select_per_task(rows: Dataset, per_task: int | None, task_column: str = "task") -> list[int]:
    """Indices of the first ``per_task`` rows of each task (all rows when None)."""
    if task_column not in rows.column_names:
        return list(range(len(rows) if per_task is None else min(per_task, len(rows))))
    counts: dict[str, int] = {}
    picked = []
    for i, task in enumerate(rows[task_column]):
        if per_task is None or counts.get(task, 0) < per_task:
            counts[task] = counts.get(task, 0) + 1
            picked.append(i)
    return picked


def evaluate(
    pipe,
    rows: Dataset,
    settings: EditSettings = EditSettings(),
    *,
    per_task: int | None = None,
    examples_per_task: int = 4,
    seed: int = 0,
    input_column: str = "input_image",
    edited_column: str = "edited_image",
    prompt_column: str = "edit_prompt",
    progress: bool = True,
) -> EvalResult:
    """Edit each selected row (seed = ``seed`` + row index) and score model and identity."""
    result = EvalResult()
    indices = select_per_task(rows, per_task)
    for i in tqdm(indices, desc="evaluate", disable=not progress, dynamic_ncols=True):
        row = rows[i]
        task = row.get("task", "all")
        source = fit_size(row[input_column].convert("RGB"))
        target = row[edited_column].convert("RGB").resize(source.size, Image.LANCZOS)
        (output,) = edit_images(pipe, [source], [row[prompt_column]], settings, seeds=[seed + i])
        for method, image in (("model", output), ("identity", source)):
            scores = {name: fn(image, target) for name, fn in METRICS.items()}
            result.rows.append({"index": i, "task": task, "method": method, "instruction": row[prompt_column], **scores})
        shown = result.examples.setdefault(task, [])
        if len(shown) < examples_per_task:
            shown.append({"instruction": row[prompt_column],
                          "images": [("input", source), ("model", output), ("ground truth", target)]})
    return result
