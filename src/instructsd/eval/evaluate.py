"""Score a model's edits against ground truth, beside the do-nothing baseline.

The identity baseline (the input returned unchanged) is what every low-level task must beat:
a denoiser that scores below its own noisy input has learned nothing useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset
from PIL import Image
from tqdm.auto import tqdm

from instructsd.data.load import Columns
from instructsd.edit.editor import EditSettings, edit_images, fit_size
from instructsd.eval.metrics import METRICS

# The task of rows in a dataset without a task column (the post's, for one): "all" is taken by
# the pooled row of every summary table.
NO_TASK = "edit"


@dataclass
class EvalResult:
    """Per-image metric rows and a few example images per task for the report."""

    rows: list[dict] = field(default_factory=list)
    examples: dict[str, list[dict]] = field(default_factory=dict)


def instruction_for(prompt: str | None, task: str) -> str:
    """The row's instruction; rows built with deferred instructions store "" and get the task's
    canonical one, as in-training validation does."""
    if prompt:
        return prompt
    from instructsd.data.instructions import canonical_instruction

    return canonical_instruction(task)


def select_per_task(rows: Dataset, per_task: int | None, task_column: str = "task") -> list[int]:
    """Up to ``per_task`` rows of each task, spread evenly over the split (all rows when None).

    Spreading matters: rows are stored photo by photo, so the first N rows of a task would
    all come from one photo.
    """
    tasks = rows[task_column] if task_column in rows.column_names else ["all"] * len(rows)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    picked = []
    for indices in by_task.values():
        if per_task is None or per_task >= len(indices):
            picked.extend(indices)
        else:
            step = len(indices) / per_task
            picked.extend(indices[int(k * step)] for k in range(per_task))
    return sorted(picked)


def evaluate(
    pipe,
    rows: Dataset,
    settings: EditSettings = EditSettings(),
    *,
    per_task: int | None = None,
    examples_per_task: int = 4,
    seed: int = 0,
    columns: Columns = Columns(),
    progress: bool = True,
    suite=None,
) -> EvalResult:
    """Edit each selected row (seed = ``seed`` + row index) and score model and identity.

    ``suite`` (an ``eval.features.MetricSuite``) scores every metric it has; without one,
    PSNR and SSIM only. ``columns`` names the dataset's columns; each score row keeps the
    row's photo (``columns.group_column``) as ``source``, which the bootstrap resamples.
    """
    if suite is not None:
        from instructsd.eval.features import Example, captions_for
    result = EvalResult()
    indices = select_per_task(rows, per_task, columns.task_column)
    for i in tqdm(indices, desc="evaluate", disable=not progress, dynamic_ncols=True):
        row = rows[i]
        task = str(row.get(columns.task_column) or NO_TASK)
        photo = row.get(columns.group_column)
        instruction = instruction_for(row[columns.prompt_column], task)
        source = fit_size(row[columns.input_column].convert("RGB"))
        target = row[columns.edited_column].convert("RGB").resize(source.size, Image.LANCZOS)
        (output,) = edit_images(pipe, [source], [instruction], settings, seeds=[seed + i])
        for method, image in (("model", output), ("identity", source)):
            if suite is None:
                scores = {name: fn(image, target) for name, fn in METRICS.items()}
            else:
                scores = suite.score(image, Example(source, target, *captions_for(task, row)), key=i)
            result.rows.append({"index": i, "task": task, "source": None if photo is None else str(photo),
                                "method": method, "instruction": instruction, **scores})
        shown = result.examples.setdefault(task, [])
        if len(shown) < examples_per_task:
            shown.append({"instruction": instruction,
                          "images": [("input", source), ("model", output), ("ground truth", target)]})
    return result
