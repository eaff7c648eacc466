"""The one row preparer: selection, sizing, instructions, seeds and the paraphrase rule every scorer shares."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from instructsd.data.instructions import canonical_instruction, get_bank, sample_instruction
from instructsd.data.load import Columns
from instructsd.edit.editor import fit_size
from instructsd.errors import InstructSDError
from instructsd.eval.rows import NO_TASK, TARGET_RESAMPLE, paraphrases, prepare_rows, select_per_task
from instructsd.train.config import TrainConfig
from instructsd.train.validation import fixed_subset

_FEATURES = Features({"input_image": Image(), "edited_image": Image(), "edit_prompt": Value("string"),
                      "task": Value("string"), "source": Value("string")})


def _rows(n: int = 6) -> Dataset:
    tasks = ["denoise", "lowlight"] * (n // 2)
    return Dataset.from_dict({
        "input_image": [photo(i, (44, 35)) for i in range(n)],
        "edited_image": [photo(100 + i, (40, 30)) for i in range(n)],
        # Row 1 was built with deferred instructions: it stores "".
        "edit_prompt": ["Remove the noise." if i != 1 else "" for i in range(n)],
        "task": tasks, "source": [f"p{i // 2}" for i in range(n)]}, features=_FEATURES)


def test_prepare_rows_sizes_instructs_and_seeds_each_row_once_for_every_caller() -> None:
    rows = _rows()
    examples = prepare_rows(rows, per_task=2, seed=5)
    assert [e.index for e in examples] == select_per_task(rows, 2) == [0, 1, 2, 3]
    for e in examples:
        raw = rows[e.index]
        # The source is what edit_images edits (sides rounded down to multiples of 8) ...
        assert e.source.size == fit_size(raw["input_image"]).size == (40, 32)
        assert np.array_equal(np.asarray(e.source), np.asarray(fit_size(raw["input_image"].convert("RGB"))))
        # ... and the target is resized to it with the one documented filter.
        expected = raw["edited_image"].convert("RGB").resize((40, 32), TARGET_RESAMPLE)
        assert np.array_equal(np.asarray(e.target), np.asarray(expected))
        assert e.seed == 5 + e.index and e.photo == raw["source"] and e.task == raw["task"]
        assert e.input_caption and e.output_caption  # built-in tasks have captions for CLIP metrics
    assert examples[1].instruction == canonical_instruction("lowlight")  # deferred: the task's canonical one
    assert examples[0].instruction == "Remove the noise."
    # max_side shrinks the source as the edit settings would.
    assert prepare_rows(rows, per_task=1, max_side=24)[0].source.size == fit_size(rows[0]["input_image"], max_side=24).size


def test_rows_without_a_task_column_get_one_task_and_a_seed_each() -> None:
    rows = _rows().remove_columns(["task"]).map(lambda r: {"edit_prompt": r["edit_prompt"] or "Brighten it."})
    examples = prepare_rows(rows, per_task=None, columns=Columns(task_column="task"))
    assert {e.task for e in examples} == {NO_TASK} and [e.seed for e in examples] == list(range(len(rows)))


def test_the_one_paraphrase_rule_is_seeded_by_seed_and_row() -> None:
    examples = prepare_rows(_rows(), per_task=None, seed=3)
    held = paraphrases(examples, "held_out", 3)
    # The rule the tiny base's card was scored with: default_rng([seed, row index]), per row.
    assert held == [sample_instruction(e.task, np.random.default_rng([3, e.index]), held_out=True) for e in examples]
    assert all(h in get_bank(e.task).held_out for h, e in zip(held, examples))
    seen = paraphrases(examples, "seen", 3)
    assert all(s in get_bank(e.task).train for s, e in zip(seen, examples))
    assert paraphrases(examples, "held_out", 3) == held  # the same draw for every model and caller
    assert paraphrases(examples, "dataset") == [e.instruction for e in examples]
    assert paraphrases(examples, "canonical") == [canonical_instruction(e.task) for e in examples]
    with pytest.raises(InstructSDError, match="unknown instruction set"):
        paraphrases(examples, "unseen")


def test_in_training_validation_scores_evals_rows() -> None:
    rows = _rows()
    cfg = TrainConfig(num_validation_images=2)
    subset = fixed_subset(rows, cfg)
    evals = prepare_rows(rows, per_task=2, seed=0)
    assert [(e.index, e.instruction, e.seed, e.source.size, e.target.size) for e in subset] == \
        [(e.index, e.instruction, e.seed, e.source.size, e.target.size) for e in evals]
    assert isinstance(subset[0].target, PILImage.Image)
