"""The instruction-following confusion matrix (issue 15): exact ground truths for every photo task."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from instructsd.data.build import build_dataset
from instructsd.data.load import load_split
from instructsd.data.photo_ops import apply_edits, parse_edit_params
from instructsd.data.samples import sample_images
from instructsd.edit.editor import EditSettings
from instructsd.eval.compare import run_compare
from instructsd.eval.following import IDENTITY, classify, confusion_markdown, following_inputs
from instructsd.eval.rows import prepare_rows

TASKS = ("exposure", "black_and_white", "hue")


def _examples(tmp_path, tasks=TASKS):
    photos = [(n, im) for n, im in sample_images() if n in ("coffee", "chelsea", "rocket", "astronaut")]
    build_dataset(photos, tmp_path / "ds", tasks=tasks, size=16, crops_per_image=2, val_fraction=0.5,
                  holdout=("coffee", "rocket"), progress=False)
    return prepare_rows(load_split(tmp_path / "ds", "validation"))


def _params(inputs, seed=0):
    from instructsd.data.photo_ops import sample_edit

    return [[sample_edit(op, np.random.default_rng([seed, i, j])) for j, op in enumerate(TASKS)] for i in range(len(inputs))]


def test_a_perfect_model_is_all_diagonal_and_a_do_nothing_model_is_all_identity(tmp_path) -> None:
    inputs = following_inputs(_examples(tmp_path))
    params = _params(inputs)
    texts = ["t"] * (len(inputs) * len(TASKS))
    perfect = [Image.fromarray(apply_edits(np.asarray(e.source), params[i][j])) for i, e in enumerate(inputs)
               for j in range(len(TASKS))]
    result = classify(inputs, TASKS, params, texts, perfect)
    assert result["accuracy"] == 1.0 and result["n"] == len(inputs) * len(TASKS) and result["n_photos"] == 2
    assert all(result["matrix"][t][t] == len(inputs) for t in TASKS)
    lazy = classify(inputs, TASKS, params, texts, [e.source for e in inputs for _ in TASKS])
    assert lazy["accuracy"] == 0.0 and all(lazy["matrix"][t][IDENTITY] == len(inputs) for t in TASKS)
    # one fixed edit whatever is asked: right only where it was asked for
    fixed = [Image.fromarray(apply_edits(np.asarray(e.source), params[i][1])) for i, e in enumerate(inputs) for _ in TASKS]
    one = classify(inputs, TASKS, params, texts, fixed)
    assert one["per_task_accuracy"] == {"exposure": 0.0, "black_and_white": 1.0, "hue": 0.0}
    assert "| black_and_white | 0 | " in confusion_markdown(one)


def test_compare_reports_the_matrix_for_each_model(tmp_path, tiny_model) -> None:
    _examples(tmp_path)
    result = run_compare({"tiny": tiny_model}, tmp_path / "ds", tmp_path / "cmp", per_task=2, sweep=(), progress=False,
                         settings=EditSettings(num_inference_steps=1), following=2,
                         lead="One sentence saying what was shown.")
    doc = json.loads((result.out / "metrics.json").read_text())
    (follow,) = doc["following"]
    assert follow["label"] == "tiny" and follow["tasks"] == list(TASKS) and follow["n"] == 2 * len(TASKS)
    assert sum(sum(c.values()) for c in follow["matrix"].values()) == 2 * len(TASKS)
    for row in follow["rows"]:  # each instruction states the amount it was scored against
        assert parse_edit_params(row["edit_params"])[0]["op"] == row["asked"]
    assert all(row["photo"] for row in doc["per_image"])
    html = result.report.read_text()
    assert "Instruction following" in html and "One sentence saying what was shown." in html
