"""The spine through the CLI, in-process: data → model → train → edit → eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from instructsd.cli import run


@pytest.fixture(scope="module")
def dataset(photo_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "pairs"
    assert run(["data", "build", str(out), "--images", str(photo_folder), "--size", "32", "--crops-per-image", "2",
                "--val-fraction", "0.25"]) == 0
    return out


# Hub-layout starts (issue 11): an InstructPix2Pix checkpoint as is, and SD 1.5 with conv_in expanded.
@pytest.mark.parametrize("start", ["ip2p_hub_model", "sd15_hub_model"])
def test_train_edit_eval_from_either_start(start, request, dataset, tmp_path, capsys):
    base = request.getfixturevalue(start)
    run_dir = tmp_path / "run"
    code = run(["train", "tiny-cpu", f"base_model={base}", f"dataset={dataset}", f"output_dir={run_dir}",
                "max_train_steps=3", "train_batch_size=4", "resolution=32", "log_every=1"])
    assert code == 0, capsys.readouterr().err
    final = run_dir / "final"

    # The resolved config is saved with the run and reloads to the same values.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["max_train_steps"] == 3 and saved["base_model"] == base
    losses = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in losses] == [1, 2, 3]
    assert all(entry["loss"] > 0 for entry in losses)

    # Whatever the start, the result is a stock 8-channel InstructPix2Pix pipeline with a card.
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(final)
    assert pipe.unet.config.in_channels == 8 and pipe.safety_checker is not None
    assert "instructsd" in (final / "README.md").read_text()

    source = tmp_path / "in.png"
    Image.new("RGB", (48, 40), (30, 120, 200)).save(source)
    out_png = tmp_path / "edited.png"
    assert run(["edit", "--model", str(final), "--image", str(source), "--instruction", "Denoise the image.",
                "--out", str(out_png), "--steps", "2", "--seed", "3"]) == 0
    edited = Image.open(out_png)
    assert edited.size == (48, 40)
    assert edited.text["instructsd:instruction"] == "Denoise the image."
    assert json.loads(out_png.with_suffix(".json").read_text())["seed"] == 3

    eval_dir = tmp_path / "eval"
    assert run(["eval", "--model", str(final), "--dataset", str(dataset), "--out", str(eval_dir), "--steps", "2",
                "--per-task", "1"]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    methods = {(row["task"], row["method"]) for row in metrics["summary"]}
    assert {("denoise", "model"), ("denoise", "identity"), ("all", "model")} <= methods
    assert all(row["psnr"] > 0 and -1 <= row["ssim"] <= 1 for row in metrics["summary"])
    report = (eval_dir / "report.html").read_text()
    assert "denoise" in report and "identity" in report and "data:image/png;base64," in report


def test_bad_inputs_exit_non_zero_with_the_culprit_named(tmp_path, dataset, tiny_model, capsys):
    corrupt = tmp_path / "photos"
    corrupt.mkdir()
    (corrupt / "broken.png").write_bytes(b"not a png at all")
    assert run(["data", "build", str(tmp_path / "out"), "--images", str(corrupt)]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert run(["train", "tiny-cpu", "learning_rat=1", f"base_model={tiny_model}", f"dataset={dataset}"]) == 1
    assert "learning_rat" in capsys.readouterr().err

    assert run(["train", "tiny-cpu", f"base_model={tmp_path / 'nope'}", f"dataset={dataset}",
                f"output_dir={tmp_path / 'r'}"]) == 1
    assert "nope" in capsys.readouterr().err

    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "missing.png"), "--instruction", "x",
                "--out", str(tmp_path / "o.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
