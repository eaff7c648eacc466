"""Photo operations as builder tasks (issue 15): `data build --tasks exposure`, edit_params, inverse
pairs, grayscale skipping, named held-out photos, and the instructions eval words them with."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from instructsd.cli import app
from instructsd.data.build import build_dataset
from instructsd.data.load import load_split
from instructsd.data.mixture import parse_mixture
from instructsd.data.photo_ops import OPS, apply_edits, linear_to_srgb, parse_edit_params, srgb_to_linear
from instructsd.data.samples import GRAYSCALE, sample_images
from instructsd.data.tasks import PHOTO_TASKS, TASKS, canonical_row_instruction
from instructsd.data.write import build_mixture
from instructsd.errors import InstructSDError
from instructsd.eval.rows import PHOTO_CAPTIONS, TASK_CAPTIONS, paraphrases, prepare_rows


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_cli_exposure_rows_match_the_exact_formula_within_8bit_rounding(tmp_path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["data", "build", str(out), "--tasks", "exposure", "--size", "24",
                                      "--crops-per-image", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = 0
    for split in ("train", "validation"):
        for row in load_split(out, split):
            (edit,) = parse_edit_params(row["edit_params"])
            assert edit["op"] == "exposure" and row["task"] == "exposure"
            x = _rgb(row["input_image"]) / 255.0
            # edited = sRGB(clip(linear(input) * 2^ev)), IEC 61966-2-1 both ways
            expected = linear_to_srgb(np.clip(srgb_to_linear(x) * 2.0 ** edit["ev"], 0.0, 1.0)) * 255.0
            assert np.abs(_rgb(row["edited_image"]) - expected).max() <= 0.5 + 1e-6
            stops = "stop" in row["edit_prompt"]
            assert stops, row["edit_prompt"]  # the instruction states the amount in stops
            rows += 1
    assert rows >= 2 * len(sample_images())  # two crops of every photo, none skipped


def test_every_photo_task_builds_rows_whose_target_is_its_params_applied(tmp_path) -> None:
    photos = [(n, im) for n, im in sample_images() if n in ("coffee", "rocket", "camera")]
    build_dataset(photos, tmp_path / "ds", tasks=PHOTO_TASKS, size=16, crops_per_image=1, val_fraction=0.34,
                  progress=False)
    rows = [r for split in ("train", "validation") for r in load_split(tmp_path / "ds", split)]
    assert {r["task"] for r in rows} == set(PHOTO_TASKS)
    for row in rows:
        edits = parse_edit_params(row["edit_params"])
        assert len(edits) == (2 if row["task"] == "photo_compound" else 1)
        target = apply_edits(np.asarray(row["input_image"].convert("RGB")), edits)
        assert np.array_equal(target, np.asarray(row["edited_image"].convert("RGB"))), row["task"]
    # colour-only operations skip the grayscale photo, with a reason
    skipped = [json.loads(line) for line in (tmp_path / "ds" / "skipped.jsonl").read_text().splitlines()]
    colour_only = {t for t in PHOTO_TASKS if TASKS[t].needs_colour}
    assert colour_only == {"saturation", "vibrance", "hue", "black_and_white"}
    assert {s["component"] for s in skipped} == colour_only and all(s["source"] == "camera" for s in skipped)
    assert all("grayscale" in s["reason"] for s in skipped)


def test_inverse_pairs_restore_the_original_with_the_opposite_instruction(tmp_path) -> None:
    photos = [(n, im) for n, im in sample_images() if n in ("coffee", "chelsea")]
    build_dataset(photos, tmp_path / "ds", tasks=("temperature",), size=16, crops_per_image=6, val_fraction=0.5,
                  inverse=1.0, progress=False)
    rows = list(load_split(tmp_path / "ds", "train"))
    for row in rows:
        (edit,) = parse_edit_params(row["edit_params"])
        # the row's input is the photo edited with the opposite shift; its target is the photo
        photo = np.asarray(row["edited_image"].convert("RGB"))
        forward = apply_edits(photo, {**edit, "shift": -edit["shift"]})
        assert np.abs(forward.astype(int) - np.asarray(row["input_image"].convert("RGB"))).max() <= 1
        word = "warmer" if edit["shift"] > 0 else "cooler"
        assert canonical_row_instruction("temperature", row["edit_params"]).endswith(f"{word}.")
    with pytest.raises(InstructSDError, match="invertible"):
        parse_mixture({"components": [{"task": "vignette", "source": {"samples": True}, "inverse": 0.5}]})


def test_holdout_names_the_validation_photos_and_keeps_a_stereo_pair_together(tmp_path) -> None:
    mix = parse_mixture({"size": 16, "holdout": ["motorcycle", "coffee"], "components": [
        {"task": "sepia", "source": {"samples": True}, "count": len(sample_images())}]})
    build_mixture(mix, tmp_path / "ds", progress=False)
    val = set(load_split(tmp_path / "ds", "validation")["group"])
    train = set(load_split(tmp_path / "ds", "train")["group"])
    assert val == {"sepia/motorcycle", "sepia/coffee"} and not val & train
    with pytest.raises(InstructSDError, match="holdout names \\['cofee'\\]"):
        build_mixture(parse_mixture({"size": 16, "holdout": ["cofee"], "components": [
            {"task": "sepia", "source": {"samples": True}}]}), tmp_path / "bad", progress=False)


def test_the_extended_sample_set_has_enough_colour_photos_to_hold_out_four() -> None:
    names = [n for n, _ in sample_images()]
    colour = [n for n in names if n not in GRAYSCALE]
    assert {"china", "flower", "motorcycle_right"} <= set(names)  # scikit-learn's two and the stereo half
    assert len(colour) >= 10
    for name, image in sample_images():
        channels = np.asarray(image, dtype=np.int16)
        spread = np.abs(channels - channels.mean(axis=2, keepdims=True)).max()
        assert (spread <= 2) == (name in GRAYSCALE), name  # the flag is right
    assert len(sample_images("skimage-15")) == 15  # the first tiny base's set, unchanged


def test_deferred_instructions_refuse_photo_operations() -> None:
    with pytest.raises(InstructSDError, match="deferred cannot word photo operations"):
        parse_mixture({"instructions": "deferred", "components": [{"task": "exposure", "source": {"samples": True}}]})


def test_eval_words_photo_rows_from_their_own_amount(tmp_path) -> None:
    photos = [(n, im) for n, im in sample_images() if n in ("coffee", "chelsea", "rocket")]
    build_dataset(photos, tmp_path / "ds", tasks=("exposure", "hue"), size=16, crops_per_image=2, val_fraction=0.34,
                  progress=False)
    examples = prepare_rows(load_split(tmp_path / "ds", "validation"))
    held = paraphrases(examples, "held_out")
    for e, text in zip(examples, held):
        (edit,) = parse_edit_params(e.edit_params)
        level, negative = OPS[edit["op"]].level_of(edit)
        assert any(word in text for word in level.words), (text, edit)  # the held-out wording states the amount
        assert e.output_caption == PHOTO_CAPTIONS[e.task][int(negative)]
    assert all(task in TASK_CAPTIONS for task in TASKS)
