"""An evaluation run as one self-contained HTML page, and example grids as PNG contact sheets.

The page needs no server and no files beside it: images are embedded as base64 PNG and the
loss curve is an inline SVG drawn here, so a report can be mailed or attached to an issue.
All text from users (instructions, notes, labels, config values) goes through html.escape,
because instructions come from datasets and may contain markup.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import html
import io
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from instructsd.eval.metrics import ALL_TASKS, LOWER_IS_BETTER, to_array

# Images smaller than this (longest side, px) are enlarged by a whole factor for viewing;
# nearest-neighbour keeps their pixels honest, which matters when judging 32-64 px test edits.
MIN_VIEW_PX = 160

# Digits shown per metric; others use 4 significant digits.
_METRIC_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.3f}", "psnr_y": "{:.2f}", "ssim_y": "{:.3f}", "l1": "{:.4f}",
                   "l2": "{:.4f}", "lpips": "{:.3f}", "clip_image": "{:.3f}", "clip_dir": "{:.3f}", "clip_t": "{:.3f}",
                   "clip_i": "{:.3f}", "dino": "{:.3f}"}
_METRIC_TITLES = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "psnr_y": "PSNR-Y (dB) ↑", "ssim_y": "SSIM-Y ↑",
                  "l1": "L1 ↓", "l2": "L2 ↓", "lpips": "LPIPS ↓", "clip_image": "CLIP image sim. (input) ↑",
                  "clip_dir": "CLIP direction ↑", "clip_t": "CLIP-T ↑", "clip_i": "CLIP-I (ground truth) ↑",
                  "dino": "DINO (ground truth) ↑"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.3em 0.7em; border: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #e6f4ea; }
tr.pooled td { border-top: 2px solid #888; }
.ci { color: #777; font-size: 0.85em; }
img { image-rendering: pixelated; display: block; }
table.grid td { border: none; padding: 2px; }
table.grid td.instruction { font-style: italic; padding-bottom: 1em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


# ----------------------------------------------------------------------------
# Files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is a rename on one filesystem; "x" mode honours the umask,
    # unlike tempfile's 0600 files, so the report stays readable by whoever could read the folder.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rgb(img: Image.Image | np.ndarray) -> Image.Image:
    return Image.fromarray(to_array(img))


def _png_data_uri(img: Image.Image | np.ndarray) -> tuple[str, int, int]:
    """The image as a data: URI, enlarged to at least MIN_VIEW_PX on its longest side."""
    im = _rgb(img)
    longest = max(im.size)
    if longest < MIN_VIEW_PX:
        k = math.ceil(MIN_VIEW_PX / longest)
        im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), im.width, im.height


# ----------------------------------------------------------------------------
# Sections


def _metric_keys(row: Mapping[str, Any]) -> list[str]:
    """Metrics in a `summarize` row, in its order: the keys that come with _lo and _hi bounds."""
    return [k for k in row if f"{k}_lo" in row and f"{k}_hi" in row]


def _fmt(key: str, value: float) -> str:
    return _METRIC_FORMATS.get(key, "{:.4g}").format(value)


def _metrics_section(metrics: list[dict[str, Any]], references: frozenset[str] | set[str] = frozenset(),
                     heading: str = "Metrics") -> str:
    """The summary table; methods in `references` (e.g. the ground truth) are shown but never marked best."""
    if not metrics:
        return f"<h2>{html.escape(heading)}</h2><p>No metrics were computed.</p>"
    keys = _metric_keys(metrics[0])
    for i, row in enumerate(metrics):
        missing = [k for k in ("task", "method", "n", *keys) if k not in row]
        if missing:
            raise ValueError(f"metrics row {i} lacks {missing}; pass the output of eval.metrics.summarize")

    # Best mean per (task, metric), marked only where there is more than one method to beat.
    best: dict[tuple[str, str], float] = {}
    methods: dict[str, int] = {}
    for row in metrics:
        if row["method"] in references:
            continue
        methods[row["task"]] = methods.get(row["task"], 0) + 1
        for k in keys:
            # Lower-is-better metrics are negated so one max finds the best of either kind.
            sign = -1.0 if k in LOWER_IS_BETTER else 1.0
            best[row["task"], k] = max(best.get((row["task"], k), -math.inf), sign * row[k])

    head = "".join(f"<th>{html.escape(_METRIC_TITLES.get(k, k))}</th>" for k in keys)
    # How many photos (clusters) each interval rests on: the bootstrap resamples those, not crops.
    photos = any("n_groups" in row for row in metrics)
    lines = [f"<h2>{html.escape(heading)}</h2><table><tr><th>task</th><th>method</th><th>n</th>"
             f"{'<th>photos</th>' if photos else ''}{head}</tr>"]
    for row in metrics:
        task = row["task"]
        cells = []
        for k in keys:
            sign = -1.0 if k in LOWER_IS_BETTER else 1.0
            is_best = (row["method"] not in references and methods.get(task, 0) > 1
                       and sign * row[k] == best[task, k])
            ci = f'<span class="ci">[{_fmt(k, row[f"{k}_lo"])}, {_fmt(k, row[f"{k}_hi"])}]</span>'
            cells.append(f'<td class="num{" best" if is_best else ""}">{_fmt(k, row[k])} {ci}</td>')
        pooled = ' class="pooled"' if task == ALL_TASKS else ""
        photos_cell = f'<td class="num">{int(row.get("n_groups", row["n"]))}</td>' if photos else ""
        lines.append(
            f"<tr{pooled}><td>{html.escape(str(task))}</td><td>{html.escape(str(row['method']))}</td>"
            f'<td class="num">{int(row["n"])}</td>{photos_cell}{"".join(cells)}</tr>'
        )
    lines.append("</table>")
    lines.append('<p class="ci">Mean [95% bootstrap interval] over examples; the bootstrap resamples whole photos '
                 '(the dataset\'s source column), so "photos" is how many the interval rests on; best method per task '
                 'in bold.</p>')
    return "\n".join(lines)


def _pairs(images: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return list(images.items()) if isinstance(images, Mapping) else [tuple(p) for p in images]


def _examples_section(examples: Mapping[str, list[dict[str, Any]]]) -> str:
    parts = ["<h2>Examples</h2>"] if examples else []
    for task, rows in examples.items():
        parts.append(f"<h3>{html.escape(str(task))}</h3>")
        if not rows:
            parts.append("<p>No examples.</p>")
            continue
        # Columns: every label, in the order first seen, so a missing image leaves a gap, not a shift.
        labels: list[str] = []
        for i, ex in enumerate(rows):
            if "images" not in ex:
                raise ValueError(f"examples[{task!r}][{i}] has no 'images'; it has keys {sorted(ex)}")
            for label, _ in _pairs(ex["images"]):
                if label not in labels:
                    labels.append(label)
        parts.append('<table class="grid"><tr>' + "".join(f"<th>{html.escape(str(c))}</th>" for c in labels) + "</tr>")
        for ex in rows:
            cells = dict(_pairs(ex["images"]))
            tds = []
            for label in labels:
                if label not in cells:
                    tds.append("<td></td>")
                    continue
                uri, w, h = _png_data_uri(cells[label])
                tds.append(f'<td><img src="{uri}" width="{w}" height="{h}" alt="{html.escape(str(label))}"></td>')
            parts.append("<tr>" + "".join(tds) + "</tr>")
            instruction = html.escape(str(ex.get("instruction", "")))
            parts.append(f'<tr><td class="instruction" colspan="{len(labels)}">{instruction}</td></tr>')
        parts.append("</table>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------
# Loss curve: a hand-drawn SVG line plot (raw loss, and its trailing moving average)


def _nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], int]:
    """Ticks at 1, 2 or 5 x 10^k inside [lo, hi], and the decimals needed to print them."""
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    decimals = max(0, -math.floor(math.log10(step)))
    first = math.ceil(lo / step - 1e-9)
    ticks = [i * step for i in range(first, math.floor(hi / step + 1e-9) + 1)]
    return ticks, decimals


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


def _loss_svg(loss_curve: list[tuple[int, float]]) -> str:
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
    xticks, xd = _nice_ticks(x0, x1)
    for t in xticks:
        X = px(t)
        out.append(f'<line x1="{X:.1f}" y1="{top + ph}" x2="{X:.1f}" y2="{top + ph + 5}" stroke="#444"/>')
        out.append(f'<text x="{X:.1f}" y="{top + ph + 17}" text-anchor="middle">{t:.{xd}f}</text>')
    yticks, yd = _nice_ticks(y0, y1)
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


# ----------------------------------------------------------------------------
# Config


def _plain(value: Any) -> Any:
    """The value as YAML-safe builtins: dataclasses and mappings to dicts, paths and the rest to str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _config_section(config: Mapping[str, Any]) -> str:
    text = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    return f"<h2>Config</h2>\n<pre>{html.escape(text)}</pre>"


# ----------------------------------------------------------------------------
# Public


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    examples: Mapping[str, list[dict[str, Any]]],
    metrics: list[dict[str, Any]],
    loss_curve: list[tuple[int, float]] | None = None,
    notes: list[str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained HTML report and return its path.

    path: the .html file to write, or a folder, in which case the file is `report.html` there.
    examples: per task, dicts with "instruction" (str) and "images", an ordered mapping or list
        of (column label, image) pairs, e.g. [("input", im), ("model", im), ("ground truth", im)].
    metrics: the rows of `eval.metrics.summarize` (grouped by "task").
    loss_curve: (step, loss) pairs, drawn with a moving average; non-finite losses are skipped.
    notes: lines shown under the title. config: dumped as YAML at the end.
    """
    out = Path(path)
    if out.suffix.lower() != ".html":
        out = out / "report.html"
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        sections.append("<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    sections.append(_metrics_section(metrics))
    if loss_curve is not None:
        sections.append(_loss_svg(loss_curve))
    sections.append(_examples_section(examples))
    if config is not None:
        sections.append(_config_section(config))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    _atomic_write(out, page.encode("utf-8"))
    return out


def save_grid(
    path: str | os.PathLike[str],
    rows: list[list[Image.Image]],
    labels: list[str] | None = None,
    *,
    pad: int = 2,
) -> Path:
    """Write a PNG contact sheet: one row per list in `rows`, optional column labels on top.

    Every cell is as large as the largest image (and, with labels, at least as wide as the
    widest label plus 4 px); images are centred in their cell, never resized. Cells are
    separated and surrounded by `pad` white pixels, so the sheet is
    cols*cell_w + (cols+1)*pad wide and header + rows*cell_h + (rows+1)*pad high.
    """
    if not rows or not rows[0]:
        raise ValueError("save_grid needs at least one row with at least one image")
    cols = len(rows[0])
    ragged = [i for i, r in enumerate(rows) if len(r) != cols]
    if ragged:
        raise ValueError(f"every row needs {cols} images (as row 0 has); rows {ragged} differ")
    if labels is not None and len(labels) != cols:
        raise ValueError(f"got {len(labels)} labels for {cols} columns")

    images = [[_rgb(im) for im in r] for r in rows]
    cell_w = max(im.width for r in images for im in r)
    cell_h = max(im.height for r in images for im in r)
    font = ImageFont.load_default()
    header = 0
    if labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        boxes = [probe.textbbox((0, 0), str(t), font=font) for t in labels]
        cell_w = max(cell_w, max(b[2] - b[0] for b in boxes) + 4)
        header = max(b[3] for b in boxes) + 2 * pad + 2

    sheet = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, header + len(rows) * cell_h + (len(rows) + 1) * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c in range(cols):
        x = pad + c * (cell_w + pad)
        if labels is not None:
            draw.text((x + 2, pad), str(labels[c]), fill="black", font=font)
        for r, row in enumerate(images):
            im = row[c]
            y = header + pad + r * (cell_h + pad)
            sheet.paste(im, (x + (cell_w - im.width) // 2, y + (cell_h - im.height) // 2))

    out = Path(path)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    _atomic_write(out, buf.getvalue())
    return out
