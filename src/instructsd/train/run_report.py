"""A training run's ``report.html``, rewritten at every validation by evaluation's one writer
(``eval.report.write_report``): the latest validation's table beside the identity baseline, every
validation's curves (PSNR, identity rate, preservation, edit strength, the best_metric), the loss,
the dual-guidance sweeps of all checkpoints, the best pick and every collapse warning (issue 16).
"""

from __future__ import annotations

import json
from pathlib import Path

from instructsd.config import to_dict
from instructsd.eval.edit_metrics import COLLAPSE_RATE, EDIT_METRICS
from instructsd.eval.guidance_sweep import read_sweeps, tradeoff
from instructsd.eval.report import write_report

CURVES = ("psnr", *EDIT_METRICS)


def write_run_report(out: Path, cfg, summary: list[dict], keys: list[str], step: int, notes: list[str] = ()) -> Path:
    """``out/report.html`` from the run folder's files; ``summary`` is the latest validation's (at ``step``)."""
    from instructsd.train.validation import BEST_FILE, read_curves, read_records

    out = Path(out)
    records = read_records(out / "validation.jsonl")
    flagged = [r["step"] for r in records if r.get("val/collapsed")]
    rows = max((r["n"] for r in summary), default=0)
    lines = [f"Latest validation: step {step}, {rows} rows edited with "
             f"{cfg.validation.num_inference_steps} steps, s_I {cfg.validation.image_guidance_scale:g}, "
             f"s_T {cfg.validation.guidance_scale:g}; identity is the input returned unchanged.", *notes]
    if flagged:
        lines.append(f"COLLAPSE: at step(s) {', '.join(map(str, flagged))} at least {COLLAPSE_RATE:.0%} of the outputs "
                     "returned their input (identity_rate); see the identity-rate curve.")
    if (out / BEST_FILE).is_file():
        best = json.loads((out / BEST_FILE).read_text())
        final = " (final/ holds these weights: validation.final_is_best)" if cfg.validation.final_is_best else ""
        lines.append(f"Best validation by {best['metric']}: step {best['step']} ({best['value']:.4g}){final}.")
    metrics = dict.fromkeys([*CURVES, *([cfg.validation.best_metric] if cfg.validation.best_metric else [])])
    curves = {m: c for m in metrics if (c := read_curves(out / "validation.jsonl", m))}
    loss_curve = _losses(out / "losses.jsonl")
    sweeps = read_sweeps(out / "validation")
    grid = {"latest validation": [{"instruction": f"step {step}: input | edit | target",
                                   "images": [("validation grid", f"validation/step-{step}.png")]}]}
    return write_report(out / "report.html", title=f"Training run {out.name}", summary=summary, keys=keys,
                        notes=lines, curves=curves, loss_curve=loss_curve, tradeoff=tradeoff(sweeps) if sweeps else None,
                        examples=grid, config=to_dict(cfg))


def _losses(path: Path) -> list[tuple[int, float]] | None:
    """(step, loss) of ``losses.jsonl`` as flushed so far (the run is still appending: a last line may be cut)."""
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append((entry["step"], entry["loss"]))
    return out
