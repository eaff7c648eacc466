"""An evaluation run: edit, score, summarise, and write metrics files plus an HTML report."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path

from datasets import Dataset

from instructsd.data.load import Columns
from instructsd.edit.editor import EditSettings
from instructsd.eval.evaluate import evaluate
from instructsd.eval.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, summarize
from instructsd.eval.provenance import provenance
from instructsd.eval.report import write_report


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_eval(
    pipe,
    rows: Dataset,
    out: str | Path,
    *,
    settings: EditSettings = EditSettings(),
    per_task: int | None = None,
    seed: int = 0,
    title: str = "instructsd evaluation",
    loss_curve: list[tuple[int, float]] | None = None,
    notes: list[str] | None = None,
    config: dict | None = None,
    progress: bool = True,
    suite=None,
    columns: Columns = Columns(),
) -> tuple[list[dict], Path]:
    """Score ``pipe`` on ``rows``; write metrics.json, metrics.csv and report.html to ``out``.

    ``suite`` (an ``eval.features.MetricSuite``) adds every metric it has to PSNR and SSIM;
    the metrics it skipped are listed in the report's notes and in metrics.json. ``columns``
    names the dataset's columns (as TrainConfig's ``*_column`` keys do).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate(pipe, rows, settings, per_task=per_task, seed=seed, progress=progress, suite=suite, columns=columns)
    summary = summarize(result.rows, metric_keys=suite.names if suite is not None else ("psnr", "ssim"))
    skipped = list(suite.notes) if suite is not None else []
    # Reproducibility: versions, machine, and sha256 of the model's weight files (issue 6).
    source = getattr(pipe, "name_or_path", None)
    prov = provenance({"model": source} if source else None)
    seeds = {"base": seed, "rule": "row i is edited with seed + i",
             "bootstrap": {"seed": BOOTSTRAP_SEED, "resamples": BOOTSTRAP_RESAMPLES, "interval": "95% percentile",
                           "resamples_groups_of": columns.group_column}}
    _write_atomic(out / "metrics.json", json.dumps({"settings": settings.__dict__, "seed": seed, "seeds": seeds,
                                                    "config": config, "columns": asdict(columns), "provenance": prov, "notes": skipped,
                                                    "metric_models": suite.sources if suite is not None else {},
                                                    "summary": summary,
                                                    "per_image": result.rows}, indent=2, default=str))
    fields = list(result.rows[0].keys()) if result.rows else []
    with (out / ".metrics.csv.tmp").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result.rows)
    os.replace(out / ".metrics.csv.tmp", out / "metrics.csv")
    settings_note = (f"{settings.num_inference_steps} steps of {settings.scheduler}, image guidance "
                     f"{settings.image_guidance_scale}, text guidance {settings.guidance_scale}, seed {seed} + row index. "
                     f"'identity' returns the input unchanged: the baseline a model must beat.")
    report = write_report(out / "report.html", title=title, examples=result.examples, metrics=summary,
                          loss_curve=loss_curve, notes=[*(notes or []), settings_note, *skipped],
                          config={**(config or {}), "seeds": seeds, "provenance": prov})
    return summary, report


def format_table(summary: list[dict]) -> str:
    """The summary as an aligned text table for the terminal."""
    lines = [f"{'task':<12} {'method':<10} {'n':>4} {'photos':>6} {'PSNR dB':>8} {'SSIM':>6}"]
    for row in summary:
        lines.append(f"{row['task']:<12} {row['method']:<10} {row['n']:>4} {row['n_groups']:>6} {row['psnr']:>8.2f} "
                     f"{row['ssim']:>6.3f}")
    return "\n".join(lines)
