"""`instructsd eval` (compare with one model and the PSNR/SSIM suite) records what reproduces it."""

from __future__ import annotations

import csv
import json

from conftest import photo

from instructsd.cli import run
from instructsd.data.build import build_dataset
from instructsd.edit.editor import EditSettings
from instructsd.eval.compare import format_table, run_compare
from instructsd.eval.edit_metrics import EDIT_METRICS
from instructsd.eval.provenance import sha256_file
from instructsd.eval.rows import TASK_CAPTIONS
from instructsd.eval.suite import MetricSuite
from instructsd.models.tiny import save_tiny_clip


def test_eval_records_seeds_versions_and_model_hashes(tmp_path, tiny_model, capsys) -> None:
    build_dataset([(f"p{i}", photo(i, (40, 40))) for i in range(3)], tmp_path / "data", tasks=("denoise",), size=32,
                  crops_per_image=1, val_fraction=0.34, progress=False)
    assert run(["eval", "--model", tiny_model, "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "eval"),
                "--steps", "1", "--per-task", "1", "--seed", "3", "--device", "cpu"]) == 0
    assert "identity" in capsys.readouterr().out  # the terminal table
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["seeds"]["base"] == 3 and doc["seed"] == 3 and doc["settings"]["num_inference_steps"] == 1
    # The PSNR/SSIM suite (with the edit-aware metrics, issue 16) unless a network metric is asked for.
    assert doc["metrics"] == ["psnr", "ssim", *EDIT_METRICS]
    assert {r["method"] for r in doc["per_image"]} == {"model", "identity", "ground_truth"}
    assert doc["provenance"]["packages"]["torch"]
    hashes = doc["provenance"]["models"]["model"]["sha256"]
    assert hashes["unet/diffusion_pytorch_model.safetensors"] == sha256_file(f"{tiny_model}/unet/diffusion_pytorch_model.safetensors")
    with (tmp_path / "eval" / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(doc["per_image"])
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "Config" in page and hashes["unet/diffusion_pytorch_model.safetensors"] in page
    assert "data:image/png;base64," in page  # eval's page travels alone: its examples are embedded
    assert "identity" in format_table(doc["summary"])


def test_eval_with_the_metric_suite_keeps_the_callers_config(tmp_path, tiny_model) -> None:
    build_dataset([(f"p{i}", photo(i, (40, 40))) for i in range(3)], tmp_path / "data", tasks=("lowlight",), size=32,
                  crops_per_image=1, val_fraction=0.34, progress=False)
    suite = MetricSuite.load(save_tiny_clip(tmp_path / "clip", [c for pair in TASK_CAPTIONS.values() for c in pair]), None, "none")
    result = run_compare({"model": tiny_model}, tmp_path / "data", tmp_path / "eval", settings=EditSettings(num_inference_steps=1),
                         per_task=1, sweep=(), suite=suite, device="cpu", progress=False, config={"note": "test"},
                         embed_images=True)
    summary = result.summary
    assert {"psnr_y", "l1", "clip_dir", "clip_t"} <= set(summary[0])
    identity = next(r for r in summary if r["method"] == "identity" and r["task"] == "lowlight")
    assert identity["clip_dir"] == 0.0 and identity["clip_image"] > 0.999
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["config"]["note"] == "test"
    assert any("dino skipped" in n for n in doc["notes"]) and "dino skipped" in result.report.read_text(encoding="utf-8")
