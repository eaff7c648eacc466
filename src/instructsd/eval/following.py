"""Instruction following of a multi-task model: does it do the edit it was asked for? (issue 15)

PSNR against a task's own ground truth cannot tell a model that follows instructions from one
that applies the same average edit whatever it is told. Photo operations give an exact ground
truth for *every* task on *any* input, so the question can be asked directly:

    for each held-out input x and each photo-operation task j (with parameters p_j drawn for
    this input and task, and an instruction stating them), edit x with that instruction; the
    output is *classified* as the task k whose ground truth op_k(x; p_k) it is closest to (mean
    squared error in 0-255 RGB), or as ``identity`` when x itself is closer than every task's.

The confusion matrix counts (asked j, classified k); accuracy is its diagonal share, with a
95% interval bootstrapped over photos (:func:`instructsd.eval.metrics.summarize`). A model that
returns its input scores 0 (every answer is ``identity``); one that applies one fixed edit scores
about 1 / number of tasks.

Inputs are the clean crops of the split's photo-operation rows (their ``input_image``);
restoration tasks are left out, since their ground truth exists only for their own degraded
input. Parameters come from ``default_rng([seed, i, j])`` and instructions are training-bank
wordings of them (:func:`instructsd.data.tasks.row_instruction`), the same for every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instructsd.data.photo_ops import OPS, apply_edits, edit_params_json, sample_edit
from instructsd.data.tasks import row_instruction
from instructsd.edit.editor import EditSettings, edit_images
from instructsd.eval.metrics import summarize
from instructsd.eval.rows import Example

IDENTITY = "identity"
_INSTRUCTION_STREAM = 1


def following_inputs(examples: Sequence[Example], max_inputs: int | None = None) -> list[Example]:
    """The clean inputs: photo-operation rows (their source is the unedited crop), spread over the split."""
    rows = [e for e in examples if e.task in OPS]
    if max_inputs is not None and len(rows) > max_inputs:
        step = len(rows) / max_inputs
        rows = [rows[int(k * step)] for k in range(max_inputs)]
    return rows


def following_tasks(examples: Sequence[Example]) -> list[str]:
    """The photo-operation tasks present, in the registry's order."""
    present = {e.task for e in examples}
    return [op for op in OPS if op in present]


def instruction_following(pipe, examples: Sequence[Example], settings: EditSettings, *, tasks: Sequence[str] | None = None,
                          seed: int = 0, max_inputs: int | None = 24, batch_size: int = 16, label: str = "model") -> dict:
    """The confusion matrix and accuracy of ``pipe`` (see the module docstring); ``{}`` with fewer than two tasks."""
    tasks = list(tasks) if tasks is not None else following_tasks(examples)
    inputs = following_inputs(examples, max_inputs)
    if len(tasks) < 2 or not inputs:
        return {}
    params = [[sample_edit(op, np.random.default_rng([seed, i, j])) for j, op in enumerate(tasks)]
              for i in range(len(inputs))]
    texts = [row_instruction(op, edit_params_json(params[i][j]), np.random.default_rng([seed, i, j, _INSTRUCTION_STREAM]))
             for i in range(len(inputs)) for j, op in enumerate(tasks)]
    sources = [e.source for e in inputs for _ in tasks]
    outputs = edit_images(pipe, sources, texts, settings, seeds=[e.seed for e in inputs for _ in tasks],
                          batch_size=batch_size)
    return classify(inputs, tasks, params, texts, outputs, label=label)


def classify(inputs: Sequence[Example], tasks: Sequence[str], params: Sequence[Sequence[dict]], texts: Sequence[str],
             outputs: Sequence, *, label: str = "model") -> dict:
    """Score given outputs (``outputs[i * len(tasks) + j]``: input i edited as task j asks)."""
    candidates = [*tasks, IDENTITY]
    matrix = {asked: {got: 0 for got in candidates} for asked in tasks}
    rows = []
    for i, e in enumerate(inputs):
        x = np.asarray(e.source.convert("RGB"))
        truths = [apply_edits(x, params[i][k]).astype(np.float64) for k in range(len(tasks))] + [x.astype(np.float64)]
        for j, asked in enumerate(tasks):
            out = np.asarray(outputs[i * len(tasks) + j].convert("RGB"), dtype=np.float64)
            errors = [float(np.mean((out - t) ** 2)) for t in truths]
            got = candidates[int(np.argmin(errors))]
            matrix[asked][got] += 1
            rows.append({"task": "following", "asked": asked, "classified": got, "method": label, "source": e.photo,
                         "index": e.index, "instruction": texts[i * len(tasks) + j],
                         "edit_params": edit_params_json(params[i][j]), "correct": float(got == asked)})
    pooled = next(r for r in summarize(rows, metric_keys=["correct"]) if r["task"] == "following")
    per_task = {t: matrix[t][t] / max(1, sum(matrix[t].values())) for t in tasks}
    return {"label": label, "tasks": list(tasks), "candidates": candidates, "matrix": matrix,
            "accuracy": pooled["correct"], "accuracy_lo": pooled["correct_lo"], "accuracy_hi": pooled["correct_hi"],
            "n": pooled["n"], "n_photos": pooled["n_groups"], "per_task_accuracy": per_task, "rows": rows}


def confusion_markdown(result: dict) -> str:
    """The matrix as a markdown table (rows: instruction given; columns: edit recognised)."""
    if not result:
        return ""
    cands = result["candidates"]
    lines = [f"Instruction following: **{result['accuracy']:.0%}** [{result['accuracy_lo']:.0%}, {result['accuracy_hi']:.0%}] "
             f"of {result['n']} edits ({result['n_photos']} held-out photos) recognised as the task asked for.", "",
             "| asked \\ recognised | " + " | ".join(cands) + " | accuracy |", "|---|" + "---|" * (len(cands) + 1)]
    for asked, counts in result["matrix"].items():
        lines.append(f"| {asked} | " + " | ".join(str(counts[c]) for c in cands)
                     + f" | {result['per_task_accuracy'][asked]:.0%} |")
    return "\n".join(lines)
