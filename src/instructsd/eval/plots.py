"""SVG plots drawn by hand for the report: per-task bars, the guidance sweeps, curves, the loss
(and the dual-guidance trade-off also as a PNG, drawn with PIL, for a training run's folder).

No plotting library: each plot is a few dozen lines of SVG, so a report needs nothing installed
to be written or read.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from instructsd.eval.metrics import ALL_TASKS, LOWER_IS_BETTER, METRIC_TITLES, format_metric

# A colour-blind-safe palette (Okabe & Ito 2008), cycled over methods.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _colour(methods: Sequence[str], method: str) -> str:
    return _PALETTE[list(methods).index(method) % len(_PALETTE)] if method in methods else "#888"


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], int]:
    """Ticks at 1, 2 or 5 x 10^k inside [lo, hi], and the decimals needed to print them."""
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    decimals = max(0, -math.floor(math.log10(step)))
    first = math.ceil(lo / step - 1e-9)
    ticks = [i * step for i in range(first, math.floor(hi / step + 1e-9) + 1)]
    return ticks, decimals



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
    ticks, decimals = nice_ticks(lo, hi)

    def py(v: float) -> float:
        return top + (1 - (v - lo) / (hi - lo)) * ph

    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-size="11">',
           f'<text x="{left}" y="14" font-weight="bold">{_e(METRIC_TITLES.get(metric, metric))} ({arrow})</text>']
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
                       f'fill="{_colour(methods, m)}"><title>{_e(task)} / {_e(m)}: {format_metric(metric, row[metric])}</title></rect>')
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
        xt, xd = nice_ticks(self.x0, self.x1)
        for t in xt:
            out.append(f'<text x="{self.px(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{t:.{xd}f}</text>')
        yt, yd = nice_ticks(self.y0, self.y1)
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


def tradeoff_svg(series: Mapping[str, list[tuple[float, float, str]]], xlabel: str, ylabel: str) -> str:
    """A guidance trade-off: one line per series (e.g. a checkpoint at one text guidance) through its
    (x, y) points, each labelled (e.g. with its image guidance), as the InstructPix2Pix paper's fig. 4 draws it."""
    series = {k: v for k, v in series.items() if v and all(math.isfinite(x) and math.isfinite(y) for x, y, _ in v)}
    if not series:
        return ""
    xs = [x for v in series.values() for x, _, _ in v]
    ys = [y for v in series.values() for _, y, _ in v]
    f = _Frame(_padded(min(xs), max(xs), 0.1), _padded(min(ys), max(ys), 0.1), (560, 340), (60, 170, 20, 44),
               xlabel, ylabel)
    out = f.open()
    for k, (name, points) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        coords = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y, _ in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for x, y, label in points:
            out.append(f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="3" fill="{colour}"><title>{_e(name)}, '
                       f'{_e(label)}</title></circle>')
            out.append(f'<text x="{f.px(x) + 4:.1f}" y="{f.py(y) - 4:.1f}" fill="{colour}">{_e(label)}</text>')
        out.extend(f.legend(k, colour, name))
    out.append("</svg>")
    return "\n".join(out)


def tradeoff_png(series: Mapping[str, list[tuple[float, float, str]]], xlabel: str, ylabel: str):
    """:func:`tradeoff_svg` drawn as a PIL image (for a PNG beside a run's files; no plotting library)."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 560, 340, 60, 170, 20, 44
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    series = {k: v for k, v in series.items() if v and all(math.isfinite(x) and math.isfinite(y) for x, y, _ in v)}
    if not series:
        draw.text((left, top), "no finite points to plot", fill="black")
        return image
    xs = [x for v in series.values() for x, _, _ in v]
    ys = [y for v in series.values() for _, y, _ in v]
    f = _Frame(_padded(min(xs), max(xs), 0.1), _padded(min(ys), max(ys), 0.1), (W, H), (left, right, top, bottom),
               xlabel, ylabel)
    draw.rectangle((left, top, left + f.pw, top + f.ph), outline="#444")
    xt, xd = nice_ticks(f.x0, f.x1)
    for t in xt:
        draw.text((f.px(t) - 10, top + f.ph + 4), f"{t:.{xd}f}", fill="black")
    yt, yd = nice_ticks(f.y0, f.y1)
    for t in yt:
        draw.line((left, f.py(t), left + f.pw, f.py(t)), fill="#eee")
        draw.text((4, f.py(t) - 6), f"{t:.{yd}f}", fill="black")
    draw.text((left + f.pw / 2 - 3 * len(xlabel), H - 16), xlabel, fill="black")
    draw.text((left + 4, top + 2), ylabel, fill="black")
    for k, (name, points) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        coords = [(f.px(x), f.py(y)) for x, y, _ in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for (cx, cy), (_, _, label) in zip(coords, points):
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
            draw.text((cx + 4, cy - 12), label, fill=colour)
        ly = top + 14 + 16 * k
        draw.line((left + f.pw + 10, ly, left + f.pw + 30, ly), fill=colour, width=2)
        draw.text((left + f.pw + 34, ly - 6), name, fill="black")
    return image


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
# Loss curve: raw loss and its trailing moving average


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points; the first points average what came before them."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def _padded(lo: float, hi: float, frac: float) -> tuple[float, float]:
    if hi == lo:  # a flat line still needs an axis
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * frac
    return lo - pad, hi + pad


def loss_svg(loss_curve: list[tuple[int, float]]) -> str:
    points = sorted((float(s), float(v)) for s, v in loss_curve)
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    dropped = len(points) - len(finite)
    note = f'<p class="ci">{dropped} non-finite loss value(s) not drawn.</p>' if dropped else ""
    if not finite:
        return f"<h2>Training loss</h2><p>No finite loss values to plot.</p>{note}"
    x = np.array([s for s, _ in finite])
    y = np.array([v for _, v in finite])
    window = int(min(200, max(1, len(y) // 10)))
    smooth = _moving_average(y, window)

    W, H, left, right, top, bottom = 720, 320, 64, 16, 16, 44
    pw, ph = W - left - right, H - top - bottom
    x0, x1 = (x[0], x[-1]) if x[-1] > x[0] else _padded(x[0], x[0], 0)
    y0, y1 = _padded(float(y.min()), float(y.max()), 0.05)

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    def polyline(ys: np.ndarray, style: str) -> str:
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys))
        return f'<polyline fill="none" {style} points="{pts}"/>'

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-size="11">']
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    xticks, xd = nice_ticks(x0, x1)
    for t in xticks:
        X = px(t)
        out.append(f'<line x1="{X:.1f}" y1="{top + ph}" x2="{X:.1f}" y2="{top + ph + 5}" stroke="#444"/>')
        out.append(f'<text x="{X:.1f}" y="{top + ph + 17}" text-anchor="middle">{t:.{xd}f}</text>')
    yticks, yd = nice_ticks(y0, y1)
    for t in yticks:
        Y = py(t)
        out.append(f'<line x1="{left}" y1="{Y:.1f}" x2="{left + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<line x1="{left - 5}" y1="{Y:.1f}" x2="{left}" y2="{Y:.1f}" stroke="#444"/>')
        out.append(f'<text x="{left - 8}" y="{Y + 4:.1f}" text-anchor="end">{t:.{yd}f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 6}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">loss</text>')
    if len(x) == 1:
        out.append(f'<circle cx="{px(x[0]):.1f}" cy="{py(y[0]):.1f}" r="3" fill="#1f77b4"/>')
    else:
        out.append(polyline(y, 'stroke="#9ecae1" stroke-width="1"'))
        out.append(polyline(smooth, 'stroke="#08519c" stroke-width="2"'))
    lx = left + pw - 200
    # Legend on a white backing: losses fall, so the top right is usually empty, but not always.
    out.append(f'<rect x="{lx - 6}" y="{top + 4}" width="200" height="38" fill="white" fill-opacity="0.85"/>')
    out.append(f'<line x1="{lx}" y1="{top + 14}" x2="{lx + 20}" y2="{top + 14}" stroke="#9ecae1"/>')
    out.append(f'<text x="{lx + 26}" y="{top + 18}">raw loss</text>')
    out.append(f'<line x1="{lx}" y1="{top + 30}" x2="{lx + 20}" y2="{top + 30}" stroke="#08519c" stroke-width="2"/>')
    out.append(f'<text x="{lx + 26}" y="{top + 34}">moving average ({window} points)</text>')
    out.append("</svg>")
    return "<h2>Training loss</h2>\n" + "\n".join(out) + note
