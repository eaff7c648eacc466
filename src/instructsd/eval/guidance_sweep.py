"""The dual-guidance sweep: the same rows edited at a grid of (text, image) guidance pairs (issue 16).

InstructPix2Pix's trade-off (Brooks et al. 2023, fig. 4): raising the image guidance s_I keeps
more of the input, raising the text guidance s_T edits more. The paper draws it once, by hand;
here every validation of a training run can draw it for its checkpoint. Each grid point edits
every row with the row's own seed through the one edit function and is scored by the one suite
(``eval.compare.score_outputs``), so a point is comparable with ``instructsd compare`` at those
settings. The curve's axes are CLIP image similarity (x) and CLIP direction similarity (y), as in
the paper, when a CLIP model was given; otherwise their pixel counterparts from the edit mask,
``preservation`` (x, L1 outside the mask: lower keeps more) and ``edit_strength`` (y, L1 inside it).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from PIL import Image

from instructsd.edit.editor import EditSettings
from instructsd.eval.compare import score_outputs
from instructsd.eval.metrics import ALL_TASKS, METRIC_TITLES
from instructsd.eval.plots import tradeoff_png
from instructsd.eval.rows import Example
from instructsd.eval.suite import MetricSuite, mean_scores
from instructsd.files import atomic_write_bytes

Edit = Callable[[EditSettings], list[Image.Image]]  # the rows' outputs at these settings


def run_sweep(edit: Edit, rows: Sequence[Example], settings: EditSettings, suite: MetricSuite,
              text_scales: Sequence[float], image_scales: Sequence[float], method: str = "model") -> list[dict]:
    """One point per (s_T, s_I) of ``text_scales`` × ``image_scales``: the mean of every metric over
    all rows, and per task."""
    points = []
    for s_t in text_scales:
        for s_i in image_scales:
            at = replace(settings, guidance_scale=float(s_t), image_guidance_scale=float(s_i))
            scored = score_outputs(method, edit(at), rows, suite, scale=float(s_i))
            tasks = dict.fromkeys(r["task"] for r in scored)
            points.append({"text_guidance": float(s_t), "image_guidance": float(s_i), "n": len(scored),
                           **mean_scores(scored, suite.names),
                           "per_task": {t: mean_scores([r for r in scored if r["task"] == t], suite.names) for t in tasks}})
    return points


def axes(points: Sequence[dict]) -> tuple[str, str]:
    """The (x, y) metric keys of the trade-off curve: CLIP's when every point has them, else the pixel ones."""
    if points and all("clip_image" in p and "clip_dir" in p for p in points):
        return "clip_image", "clip_dir"
    return "preservation", "edit_strength"


def curves(points: Sequence[dict], prefix: str = "") -> dict[str, list[tuple[float, float, str]]]:
    """The points as trade-off series, one per text guidance, each point labelled with its image guidance."""
    x, y = axes(points)
    series: dict[str, list[tuple[float, float, str]]] = {}
    for p in sorted(points, key=lambda p: (p["text_guidance"], p["image_guidance"])):
        if x in p and y in p:
            series.setdefault(f"{prefix}s_T={p['text_guidance']:g}", []).append((p[x], p[y], f"{p['image_guidance']:g}"))
    return series


def axis_labels(points: Sequence[dict]) -> tuple[str, str]:
    return tuple(METRIC_TITLES.get(k, k) for k in axes(points))


def write_sweep(folder: Path, step: int, points: list[dict], settings: EditSettings, suite: MetricSuite) -> Path:
    """``sweep-step-N.json`` (every point, the settings and metric models) and ``sweep-step-N.png`` in ``folder``."""
    path = Path(folder) / f"sweep-step-{step}.json"
    doc = {"step": step, "settings": asdict(settings), "axes": list(axes(points)), "metrics": suite.names,
           "metric_models": suite.sources, "notes": suite.notes, "task": ALL_TASKS, "points": points}
    atomic_write_bytes(path, json.dumps(doc, indent=2).encode())
    buf = io.BytesIO()
    tradeoff_png(curves(points, f"step {step}, "), *axis_labels(points)).save(buf, format="PNG")
    atomic_write_bytes(path.with_suffix(".png"), buf.getvalue())
    return path


def read_sweeps(folder: Path) -> dict[int, list[dict]]:
    """Every ``sweep-step-N.json`` in ``folder``: {step: points}, by step."""
    found = {}
    for path in Path(folder).glob("sweep-step-*.json"):
        doc = json.loads(path.read_text())
        found[int(doc["step"])] = doc["points"]
    return dict(sorted(found.items()))


def tradeoff(sweeps: dict[int, list[dict]]) -> tuple[str, str, dict[str, list[tuple[float, float, str]]]]:
    """All checkpoints' curves, as ``eval.report.write_report(tradeoff=...)`` takes them: (x key, y key, series)."""
    x, y = axes([p for pts in sweeps.values() for p in pts])
    return x, y, {k: v for step, pts in sweeps.items() for k, v in curves(pts, f"step {step}, ").items()}
