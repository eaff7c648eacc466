"""Instruction banks: coverage, held-out separation, compound instructions, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from instructsd.cli import run
from instructsd.data.instructions import (
    BANK_TASKS,
    canonical_instruction,
    get_bank,
    sample_instruction,
)
from instructsd.data.tasks import TASKS
from instructsd.errors import InstructSDError

POST_TASKS = ("cartoonize", "derain", "deblur", "denoise", "lowlight", "dehaze", "jpeg")


@pytest.mark.parametrize("task", POST_TASKS)
def test_every_bank_has_50_distinct_paraphrases_and_a_disjoint_held_out_subset(task):
    bank = get_bank(task)
    everything = bank.train + bank.held_out
    assert len(set(everything)) == len(everything) >= 50
    assert bank.held_out and not set(bank.held_out) & set(bank.train)
    assert bank.canonical in bank.train
    assert all(t[0].isupper() and t.rstrip()[-1] in ".?!" for t in everything)
    assert bank.clauses and bank.held_out_clauses
    assert all("{obj}" in c for c in bank.clauses + bank.held_out_clauses)


def test_unknown_task_lists_the_banks():
    with pytest.raises(InstructSDError, match="banks exist for: denoise.*jpeg"):
        get_bank("sharpen")
    with pytest.raises(InstructSDError, match="banks exist for"):
        sample_instruction("deblur+sharpen", np.random.default_rng(0))


def test_sampling_never_returns_held_out_text_unless_asked():
    rng = np.random.default_rng(0)
    for task in BANK_TASKS:
        bank = get_bank(task)
        drawn = {sample_instruction(task, rng) for _ in range(400)}
        assert drawn <= set(bank.train) and len(drawn) > len(bank.train) // 2
        held = {sample_instruction(task, rng, held_out=True) for _ in range(100)}
        assert held <= set(bank.held_out)


def test_sampling_is_deterministic_for_a_seed():
    a = [sample_instruction("deblur+denoise", np.random.default_rng(s)) for s in range(20)]
    b = [sample_instruction("deblur+denoise", np.random.default_rng(s)) for s in range(20)]
    assert a == b and len(set(a)) > 10


def test_compound_instructions_follow_the_order_of_application():
    assert canonical_instruction("deblur+denoise") == "Deblur the image and denoise it."
    assert canonical_instruction("denoise+deblur") == "Denoise the image and deblur it."
    rng = np.random.default_rng(1)
    for _ in range(50):
        text = sample_instruction("deblur+denoise", rng)
        assert text[0].isupper() and text.endswith((".", "?")) and " it" in text
        low = text.lower()
        i_blur = min(low.find(w) for w in ("blur", "sharp", "focus") if w in low)
        i_noise = min(low.find(w) for w in ("nois", "grain") if w in low)
        assert i_blur < i_noise, text  # the clause order is the order of application
    held = {sample_instruction("deblur+denoise+lowlight", rng, held_out=True) for _ in range(30)}
    train_templates_text = {sample_instruction("deblur+denoise+lowlight", rng) for _ in range(200)}
    assert not held & train_templates_text


def test_tasks_take_their_instructions_from_the_banks():
    for name, task in TASKS.items():
        if task.photo_op is not None:  # amount-stating templates: tests/test_photo_ops.py, test_data_photo_tasks.py
            continue
        bank = get_bank(name)
        assert task.canonical == bank.canonical
        assert set(task.instructions) == set(bank.train)


def test_cli_prints_a_bank(capsys):
    assert run(["data", "instructions", "dehaze"]) == 0
    out = capsys.readouterr().out
    assert "Dehaze the image." in out and "held_out (10)" in out
    assert run(["data", "instructions", "deblur+denoise", "--samples", "3"]) == 0
    assert "Deblur the image and denoise it." in capsys.readouterr().out
    assert run(["data", "instructions", "nope"]) == 1
