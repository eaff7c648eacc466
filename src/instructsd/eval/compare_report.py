"""The comparison report: metric tables, per-task bar charts, the image-guidance sweep, grids.

Unlike the single-model report, images are *linked* (relative ``images/...png`` paths inside
the run folder), because a comparison holds every output of every method; the folder is the
unit to share. Plots are SVG drawn here, so the report needs no plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from instructsd.eval.features import VS_GROUND_TRUTH
from instructsd.eval.metrics import ALL_TASKS, LOWER_IS_BETTER
from instructsd.eval.report import _CSS, _METRIC_TITLES, _atomic_write, _fmt, _metrics_section, _nice_ticks, _plain

# A colour-blind-safe palette (Okabe & Ito 2008), cycled over methods.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_EXTRA_CSS = """
img.cell { width: 128px; height: auto; }
.plots svg { margin: 0 1em 1em 0; }
details { margin: 0.5em 0 1.5em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _colour(methods: Sequence[str], method: str) -> str:
    return _PALETTE[list(methods).index(method) % len(_PALETTE)] if method in methods else "#888"


# ----------------------------------------------------------------------------
# Plots


def bar_chart_svg(summary: list[dict], metric: str, methods: Sequence[str], exclude: Sequence[str] = ()) -> str:
    """Grouped bars of ``metric``: one group per task, one bar per method (colour fixed by its place in
    ``methods``, so every chart agrees), 95% interval whiskers; methods in ``exclude`` are left out."""
    tasks = [t for t in dict.fromkeys(r["task"] for r in summary)]
    tasks = [t for t in tasks if t != ALL_TASKS] + ([ALL_TASKS] if ALL_TASKS in tasks else [])
    shown = [m for m in methods if m not in exclude and any(r["method"] == m for r in summary)]
    by = {(r["task"], r["method"]): r for r in summary}
    values = [by[t, m][k] for t in tasks for m in shown if (t, m) in by for k in (metric, f"{metric}_lo", f"{metric}_hi")]
    if not values:
        return ""
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    if hi == lo:
        hi = lo + 1.0
    W, H, left, right, top, bottom = 60 + 34 * max(1, len(tasks) * len(shown)) + 24 * len(tasks), 260, 56, 12, 28, 40
    # Legend under the task labels: a swatch and the method's name, wrapped into rows to fit the width.
    legend, x, y = [], 0.0, 0
    for m in shown:
        item_w = 22 + 6.5 * len(str(m))
        if x and left + x + item_w > W - right:
            x, y = 0.0, y + 1
        legend.append((left + x, y, m))
        x += item_w + 12
    H += 18 * (y + 1) + 6
    pw, ph = W - left - right, H - top - bottom - 18 * (y + 1) - 6
    ticks, decimals = _nice_ticks(lo, hi)

    def py(v: float) -> float:
        return top + (1 - (v - lo) / (hi - lo)) * ph

    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-size="11">',
           f'<text x="{left}" y="14" font-weight="bold">{_e(_METRIC_TITLES.get(metric, metric))} ({arrow})</text>']
    for t in ticks:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.{decimals}f}</text>')
    out.append(f'<line x1="{left}" y1="{py(0):.1f}" x2="{left + pw}" y2="{py(0):.1f}" stroke="#444"/>')
    group_w = pw / max(1, len(tasks))
    bar_w = min(28.0, (group_w - 16) / max(1, len(shown)))
    for g, task in enumerate(tasks):
        x0 = left + g * group_w + (group_w - bar_w * len(shown)) / 2
        for j, m in enumerate(shown):
            row = by.get((task, m))
            if row is None:
                continue
            x = x0 + j * bar_w
            y, y0 = py(row[metric]), py(0)
            out.append(f'<rect x="{x:.1f}" y="{min(y, y0):.1f}" width="{bar_w - 2:.1f}" height="{abs(y0 - y):.1f}" '
                       f'fill="{_colour(methods, m)}"><title>{_e(task)} / {_e(m)}: {_fmt(metric, row[metric])}</title></rect>')
            cx = x + (bar_w - 2) / 2
            out.append(f'<line x1="{cx:.1f}" y1="{py(row[f"{metric}_lo"]):.1f}" x2="{cx:.1f}" '
                       f'y2="{py(row[f"{metric}_hi"]):.1f}" stroke="#222"/>')
        out.append(f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{top + ph + 16}" text-anchor="middle">{_e(task)}</text>')
    out.append('<g class="legend">')
    for lx, row, m in legend:
        ly = top + ph + 34 + 18 * row
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="12" fill="{_colour(methods, m)}"/>'
                   f'<text x="{lx + 16:.1f}" y="{ly + 1}">{_e(m)}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


class _Frame:
    """A line-plot frame: data → pixel mapping, box, ticks and axis labels, drawn once."""

    def __init__(self, x_range, y_range, size, margins, xlabel: str, ylabel: str):
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range
        (self.W, self.H), (self.left, self.right, self.top, self.bottom) = size, margins
        self.pw, self.ph = self.W - self.left - self.right, self.H - self.top - self.bottom
        self.xlabel, self.ylabel = xlabel, ylabel

    def px(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def py(self, v: float) -> float:
        return self.top + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph

    def open(self) -> list[str]:
        left, top, pw, ph, H = self.left, self.top, self.pw, self.ph, self.H
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.W}" height="{H}" viewBox="0 0 {self.W} {H}" font-size="11">',
               f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
        xt, xd = _nice_ticks(self.x0, self.x1)
        for t in xt:
            out.append(f'<text x="{self.px(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{t:.{xd}f}</text>')
        yt, yd = _nice_ticks(self.y0, self.y1)
        for t in yt:
            out.append(f'<line x1="{left}" y1="{self.py(t):.1f}" x2="{left + pw}" y2="{self.py(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{self.py(t) + 4:.1f}" text-anchor="end">{t:.{yd}f}</text>')
        out.append(f'<text x="{left + pw / 2}" y="{H - 7}" text-anchor="middle">{_e(self.xlabel)}</text>')
        out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
                   f'{_e(self.ylabel)}</text>')
        return out

    def legend(self, k: int, colour: str, name: str) -> list[str]:
        ly, x = self.top + 14 + 16 * k, self.left + self.pw
        return [f'<line x1="{x + 10}" y1="{ly}" x2="{x + 30}" y2="{ly}" stroke="{colour}" stroke-width="2"/>',
                f'<text x="{x + 34}" y="{ly + 4}">{_e(name)}</text>']


def sweep_svg(points: list[dict], methods: Sequence[str]) -> str:
    """CLIP direction similarity (y) against CLIP image similarity (x), one line per model over image guidance.

    The InstructPix2Pix paper's fig. 8: raising image guidance keeps more of the input (x up)
    and edits less (y down); a better model sits further up and to the right.
    """
    pts = [p for p in points if "clip_image" in p and "clip_dir" in p]
    if not pts:
        return ""
    xs, ys = [p["clip_image"] for p in pts], [p["clip_dir"] for p in pts]

    def span(vals: list[float]) -> tuple[float, float]:
        a, b = min(vals), max(vals)
        pad = (b - a) * 0.1 or 0.05
        return a - pad, b + pad

    f = _Frame(span(xs), span(ys), (520, 340), (60, 130, 20, 44),
               "CLIP image similarity (output vs input)", "CLIP direction similarity")
    out = f.open()
    for k, m in enumerate(dict.fromkeys(p["method"] for p in pts)):
        line = sorted((p for p in pts if p["method"] == m), key=lambda p: p["image_guidance"])
        colour = _colour(methods, m)
        coords = " ".join(f"{f.px(p['clip_image']):.1f},{f.py(p['clip_dir']):.1f}" for p in line)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for p in line:
            out.append(f'<circle cx="{f.px(p["clip_image"]):.1f}" cy="{f.py(p["clip_dir"]):.1f}" r="3" fill="{colour}">'
                       f'<title>{_e(m)}, image guidance {p["image_guidance"]:g}</title></circle>')
            out.append(f'<text x="{f.px(p["clip_image"]) + 4:.1f}" y="{f.py(p["clip_dir"]) - 4:.1f}" fill="{colour}">'
                       f'{p["image_guidance"]:g}</text>')
        out.extend(f.legend(k, colour, m))
    out.append("</svg>")
    return "\n".join(out)


def curves_svg(curves: Mapping[str, list[tuple[float, float]]], ylabel: str, xlabel: str = "step") -> str:
    """Line plot of several (x, y) series (learning curves side by side)."""
    series = {k: sorted(v) for k, v in curves.items() if v and all(math.isfinite(y) for _, y in v)}
    if not series:
        return ""
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = (max(ys) - min(ys)) * 0.1 or 0.5
    y0, y1 = min(ys) - pad, max(ys) + pad
    f = _Frame((x0, x1), (y0, y1), (520, 300), (60, 150, 16, 40), xlabel, ylabel)
    out = f.open()
    for k, name in enumerate(series):
        colour = _PALETTE[k % len(_PALETTE)]
        coords = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in series[name])
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for x, y in series[name]:
            out.append(f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="3" fill="{colour}"/>')
        out.extend(f.legend(k, colour, name))
    out.append("</svg>")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# Sections


def _grids_section(examples: Mapping[str, list[dict]]) -> str:
    parts = ["<h2>Examples</h2>"]
    for task, rows in examples.items():
        parts.append(f"<h3>{_e(task)}</h3>")
        labels = [label for label, _ in rows[0]["images"]] if rows else []
        parts.append('<table class="grid"><tr>' + "".join(f"<th>{_e(c)}</th>" for c in labels) + "</tr>")
        for ex in rows:
            parts.append("<tr>" + "".join(f'<td><a href="{_e(src)}"><img class="cell" src="{_e(src)}" alt="{_e(label)}"></a></td>'
                                          for label, src in ex["images"]) + "</tr>")
            parts.append(f'<tr><td class="instruction" colspan="{len(labels)}">#{ex["index"]}: {_e(ex["instruction"])}</td></tr>')
        parts.append("</table>")
    return "\n".join(parts)


def _generalization_section(rows: list[dict], keys: Sequence[str]) -> str:
    if not rows:
        return ""
    shown = [k for k in ("psnr", "ssim", "clip_dir", "clip_t", "dino") if k in keys]
    head = "".join(f"<th>{_e(_METRIC_TITLES.get(k, k))}</th>" for k in shown)
    lines = ["<h2>Instruction generalisation</h2>",
             "<p>The same images and seeds, instructed with paraphrases seen in training vs held out from it "
             "(and, where the split has them, compound tasks). The gap is held_out − seen.</p>",
             f"<table><tr><th>kind</th><th>method</th><th>instruction set</th><th>n</th>{head}</tr>"]
    by = {(r["kind"], r["method"], r["instruction_set"]): r for r in rows}
    for r in rows:
        cells = "".join(f'<td class="num">{_fmt(k, r[k])} <span class="ci">[{_fmt(k, r[k + "_lo"])}, '
                        f'{_fmt(k, r[k + "_hi"])}]</span></td>' for k in shown)
        lines.append(f"<tr><td>{_e(r['kind'])}</td><td>{_e(r['method'])}</td><td>{_e(r['instruction_set'])}</td>"
                     f'<td class="num">{r["n"]}</td>{cells}</tr>')
    for (kind, method, which), r in by.items():
        seen = by.get((kind, method, "seen"))
        if which == "held_out" and seen is not None:
            cells = "".join(f'<td class="num">{r[k] - seen[k]:+.3f}</td>' for k in shown)
            lines.append(f'<tr class="pooled"><td>{_e(kind)}</td><td>{_e(method)}</td><td>gap (held_out − seen)</td>'
                         f"<td></td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _provenance_section(config: Mapping, seeds: Mapping, provenance: Mapping) -> str:
    text = yaml.safe_dump(_plain({"config": config, "seeds": seeds, "provenance": provenance}), sort_keys=False,
                          allow_unicode=True)
    return ("<h2>Reproduce</h2>\n<p>This comparison's config and seeds; package versions; and for every model the "
            "sha256 of its files and the resolved config of the training run that made it (under provenance.models).</p>\n"
            f"<pre>{_e(text)}</pre>")


def write_compare_report(path: str | Path, *, title: str, summary: list[dict], keys: Sequence[str],
                         examples: Mapping[str, list[dict]], methods: Sequence[str], sweep: list[dict],
                         generalization: list[dict], notes: Sequence[str], config: Mapping, seeds: Mapping,
                         provenance: Mapping, curves: Mapping[str, Mapping[str, list]] | None = None) -> Path:
    """Write report.html for a comparison run; image paths in ``examples`` are relative to its folder."""
    out = Path(path)
    sections = [f"<h1>{_e(title)}</h1>"]
    if notes:
        sections.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    # Two tables, so neither is too wide to read: fidelity to the ground truth, then edit strength
    # and instruction following (CLIP metrics that compare with the input and the captions).
    fidelity = [k for k in keys if k in VS_GROUND_TRUTH]
    following = [k for k in keys if k not in VS_GROUND_TRUTH]
    for heading, subset in (("Fidelity to the ground truth", fidelity), ("Edit and instruction following", following)):
        if subset:
            rows = [{**{k: r[k] for k in ("task", "method", "n", "n_groups") if k in r},
                     **{f"{k}{s}": r[f"{k}{s}"] for k in subset for s in ("", "_lo", "_hi")}} for r in summary]
            sections.append(_metrics_section(rows, references={"ground_truth"}, heading=heading))
    sections.append('<p class="ci">ground_truth is the reference (for teacher-made tasks, the teacher\'s output): '
                    "its pixel metrics are perfect by construction (PSNR capped at 100 dB); its CLIP scores are the "
                    "ceiling a model's edit is measured against. identity returns the input unchanged.</p>")
    # The ground truth scores perfectly against itself; its bar would only squash the others.
    bars = [bar_chart_svg(summary, k, methods, exclude=("ground_truth",) if k in VS_GROUND_TRUTH else ()) for k in keys]
    sections.append('<h2>Per task</h2><div class="plots">' + "\n".join(b for b in bars if b) + "</div>")
    if curves:
        plots = [curves_svg(series, ylabel=_METRIC_TITLES.get(metric, metric)) for metric, series in curves.items()]
        sections.append('<h2>Validation curves</h2><div class="plots">' + "\n".join(p for p in plots if p) + "</div>")
    if sweep:
        sections.append("<h2>Image-guidance sweep</h2><p>Each point is one image-guidance scale (label), averaged over "
                        "every compared image; text guidance fixed.</p>" + sweep_svg(sweep, methods))
    sections.append(_generalization_section(generalization, keys))
    sections.append(_grids_section(examples))
    sections.append(_provenance_section(config, seeds, provenance))
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}{_EXTRA_CSS}</style></head>\n<body>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")
    _atomic_write(out, page.encode("utf-8"))
    return out
