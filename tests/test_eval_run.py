"""`run_eval` (the quickstart's and `instructsd eval`'s scorer) records what reproduces it."""

from __future__ import annotations

import json

from conftest import photo

from instructsd.data.build import build_dataset
from instructsd.edit.editor import EditSettings, load_pipeline
from instructsd.eval.features import TASK_CAPTIONS, MetricSuite
from instructsd.models.tiny import save_tiny_clip
from instructsd.eval.provenance import sha256_file
from instructsd.eval.run import format_table, run_eval
from instructsd.data.load import load_split


def test_run_eval_records_seeds_versions_and_model_hashes(tmp_path, tiny_model) -> None:
    build_dataset([(f"p{i}", photo(i, (40, 40))) for i in range(3)], tmp_path / "data", tasks=("denoise",), size=32,
                  crops_per_image=1, val_fraction=0.34, progress=False)
    rows = load_split(tmp_path / "data", "validation", ["input_image", "edited_image", "edit_prompt"])
    pipe = load_pipeline(tiny_model, device="cpu")
    summary, report = run_eval(pipe, rows, tmp_path / "eval", settings=EditSettings(num_inference_steps=1), per_task=1,
                               seed=3, progress=False, config={"note": "test"})
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["seeds"]["base"] == 3 and doc["config"] == {"note": "test"}
    assert doc["provenance"]["packages"]["torch"]
    hashes = doc["provenance"]["models"]["model"]["sha256"]
    assert hashes["unet/diffusion_pytorch_model.safetensors"] == sha256_file(f"{tiny_model}/unet/diffusion_pytorch_model.safetensors")
    page = report.read_text(encoding="utf-8")
    assert "Config" in page and hashes["unet/diffusion_pytorch_model.safetensors"] in page
    assert "identity" in format_table(summary)


def test_run_eval_with_the_metric_suite(tmp_path, tiny_model) -> None:
    build_dataset([(f"p{i}", photo(i, (40, 40))) for i in range(3)], tmp_path / "data", tasks=("lowlight",), size=32,
                  crops_per_image=1, val_fraction=0.34, progress=False)
    rows = load_split(tmp_path / "data", "validation", ["input_image", "edited_image", "edit_prompt"])
    suite = MetricSuite.load(save_tiny_clip(tmp_path / "clip", [c for pair in TASK_CAPTIONS.values() for c in pair]), None, "none")
    summary, report = run_eval(load_pipeline(tiny_model, device="cpu"), rows, tmp_path / "eval",
                               settings=EditSettings(num_inference_steps=1), per_task=1, progress=False, suite=suite)
    assert {"psnr_y", "l1", "clip_dir", "clip_t"} <= set(summary[0])
    identity = next(r for r in summary if r["method"] == "identity" and r["task"] == "lowlight")
    assert identity["clip_dir"] == 0.0 and identity["clip_image"] > 0.999
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert any("dino skipped" in n for n in doc["notes"]) and "dino skipped" in report.read_text(encoding="utf-8")
