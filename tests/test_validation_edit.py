"""Edit-aware in-training validation (issue 16): a model that returns its input is flagged, the sweep,
the best pick, final_is_best and the run's report, on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image, ImageOps
from safetensors.torch import load_file

from instructsd.config import load_config
from instructsd.data.load import load_split
from instructsd.edit.editor import EditSettings
from instructsd.eval.guidance_sweep import curves, run_sweep
from instructsd.eval.rows import prepare_rows
from instructsd.errors import InstructSDError
from instructsd.eval.edit_metrics import EDIT_METRICS
from instructsd.eval.rows import TASK_CAPTIONS
from instructsd.eval.suite import CLIP_METRICS, MetricSuite
from instructsd.models.tiny import save_tiny_clip
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train
from instructsd.train.tracking import RunLog
from instructsd.train.validation import read_records, record, validation_set


def _cfg(model, data, out, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=2",
        "log_every=1", "num_validation_images=1", "validation.num_inference_steps=1", "report_to=none", *extra])


def test_a_model_returning_its_input_is_flagged_and_never_picked_as_best(tiny_model, pairs_24px, tmp_path, capsys):
    # The real validation path (scoring, logging, flags, best pick, report) given the edits of a model that
    # returns its input, then of one that edits (badly: the inverted input, lower PSNR than the input itself).
    out = tmp_path / "run"
    out.mkdir()
    cfg = _cfg(tiny_model, pairs_24px, out, "validation_every=2", "validation.best_metric=psnr")
    data = validation_set(load_split(cfg.dataset, "validation", ["input_image", "edited_image", "edit_prompt"]), cfg)
    AcceleratorState._reset_state(reset_partial_state=False)
    log = RunLog(Accelerator(cpu=True), out, [], {}, [], 0)

    def returns_input(settings, progress=None):
        return [e.source for e in data.rows]

    first = record(2, returns_input, data, out, log, cfg)
    assert first.values["val/identity_rate"] == 1.0 and first.values["val/collapsed"] == 1.0
    tasks = {e.task for e in data.rows}
    assert len(tasks) > 1 and all(first.values[f"val/{t}/identity_rate"] == 1.0 for t in tasks)
    assert first.values["val/preservation"] == 0.0 and first.values["val/edit_strength"] == 0.0
    assert "warning: the model at step 2 returned its input for 100% of the rows" in capsys.readouterr().out
    assert first.best_step is None and not (out / "best.json").exists()  # a collapsed validation is never the best
    assert "COLLAPSE: at step(s) 2" in (out / "report.html").read_text()

    def inverts(settings, progress=None):
        return [ImageOps.invert(e.source) for e in data.rows]

    second = record(4, inverts, data, out, log, cfg)
    assert second.values["val/identity_rate"] == 0.0 and second.values["val/collapsed"] == 0.0
    assert second.values["val/psnr"] < first.values["val/psnr"]  # worse by PSNR, still the best usable one
    assert second.best_step == 4
    best = json.loads((out / "best.json").read_text())
    assert best["step"] == 4 and best["skipped_collapsed"] == [2]
    assert "warning" not in capsys.readouterr().out
    log.close()


def test_tiny_run_with_the_sweep_writes_edit_metrics_sweeps_report_and_keeps_the_best(tiny_model, pairs_24px, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model, pairs_24px, out, "max_train_steps=2", "validation_every=1", "validation.sweep=true",
               "validation.sweep_text=[5.0]", "validation.sweep_image=[1.0, 2.0]", "validation.best_metric=psnr",
               "validation.final_is_best=true", "edit_region_weight=2.0", "keep_region_weight=0.5")
    train(cfg, progress=False)

    records = read_records(out / "validation.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert {"val/identity_rate", "val/preservation", "val/edit_strength", "val/collapsed", "val/psnr"} <= set(r)
        assert 0.0 <= r["val/identity_rate"] <= 1.0 and r["val/preservation"] >= 0 and r["val/edit_strength"] > 0
    for step in (1, 2):
        sweep = json.loads((out / "validation" / f"sweep-step-{step}.json").read_text())
        assert [(p["text_guidance"], p["image_guidance"]) for p in sweep["points"]] == [(5.0, 1.0), (5.0, 2.0)]
        assert sweep["axes"] == ["preservation", "edit_strength"]  # no CLIP model given: the pixel trade-off
        assert all({"identity_rate", "preservation", "edit_strength", "psnr", "per_task"} <= set(p) for p in sweep["points"])
        assert Image.open(out / "validation" / f"sweep-step-{step}.png").size == (560, 340)
    report = (out / "report.html").read_text()
    assert "Dual-guidance sweep" in report and "step 1, s_T=5" in report and "step 2, s_T=5" in report
    assert "Best validation by psnr" in report

    best = json.loads((out / "best.json").read_text())
    usable = [r for r in records if not r["val/collapsed"]]
    assert best["step"] == max(usable, key=lambda r: (r["val/psnr"], -r["step"]))["step"]
    # final/ holds the best validation's weights.
    kept = load_file(str(out / "best" / "unet.safetensors"))
    final = load_file(str(out / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert kept.keys() <= final.keys() and all(torch.equal(kept[k], final[k]) for k in kept)


def test_the_sweep_edits_every_grid_pair_with_its_own_settings(pairs_24px):
    rows = prepare_rows(load_split(pairs_24px, "validation", ["input_image", "edited_image", "edit_prompt"]), per_task=1)
    asked = []

    def edit(settings, progress=None):  # an "edit" that records its settings and returns the input
        asked.append((settings.guidance_scale, settings.image_guidance_scale, settings.num_inference_steps))
        return [e.source for e in rows]

    points = run_sweep(edit, rows, EditSettings(num_inference_steps=3), MetricSuite.headline(), [2, 7.5], [1.0, 1.5, 2.0])
    assert asked == [(t, i, 3) for t in (2.0, 7.5) for i in (1.0, 1.5, 2.0)]
    assert [(p["text_guidance"], p["image_guidance"], p["n"]) for p in points] == [(t, i, len(rows)) for t, i, _ in asked]
    assert all(p["identity_rate"] == 1.0 and p["per_task"].keys() == {e.task for e in rows} for p in points)
    assert list(curves(points)) == ["s_T=2", "s_T=7.5"] and [label for *_, label in curves(points)["s_T=2"]] == ["1", "1.5", "2"]


def test_validation_with_a_tiny_clip_scores_clip_metrics_and_sweeps_on_clip_axes(tiny_model, pairs_24px, tmp_path):
    rows = load_split(pairs_24px, "validation", ["input_image", "edited_image", "edit_prompt"])
    with pytest.raises(InstructSDError, match="validation.best_metric 'clip_dir' is not a metric"):
        validation_set(rows, _cfg(tiny_model, pairs_24px, tmp_path, "validation.best_metric=clip_dir"))
    clip = save_tiny_clip(tmp_path / "clip", [c for pair in TASK_CAPTIONS.values() for c in pair])
    out = tmp_path / "run"
    out.mkdir()
    cfg = _cfg(tiny_model, pairs_24px, out, f"validation.clip={clip}", "validation.best_metric=clip_dir",
               "validation.sweep=true", "validation.sweep_text=[5.0]", "validation.sweep_image=[1.0, 2.0]")
    data = validation_set(rows, cfg)
    assert data.suite.names == ["psnr", "ssim", *EDIT_METRICS, *CLIP_METRICS]
    AcceleratorState._reset_state(reset_partial_state=False)
    log = RunLog(Accelerator(cpu=True), out, [], {}, [], 0)
    outcome = record(3, lambda settings, progress=None: [ImageOps.invert(e.source) for e in data.rows], data, out, log, cfg)
    log.close()
    assert {"val/clip_dir", "val/clip_image", "val/clip_t", "val/clip_i"} <= set(outcome.values)
    assert outcome.best_step == 3
    sweep = json.loads((out / "validation" / "sweep-step-3.json").read_text())
    assert sweep["axes"] == ["clip_image", "clip_dir"] and sweep["metric_models"] == {"clip": str(clip)}
