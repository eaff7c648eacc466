"""The one HTML report of an evaluation run, and example grids as PNG contact sheets.

`instructsd eval`, `instructsd compare`, experiments and the quickstart all write their page with
:func:`write_report`: metric tables (mean and 95% interval per task and method), per-task bar
charts, validation curves, the image-guidance sweep, the instruction-generalisation table, example
grids and what reproduces the run. Every section but the title is optional. Example images are
either *linked* (relative ``images/...png`` paths inside the run folder, as a comparison holding
every output does) or *embedded* as base64 PNG (a page that can be mailed or attached to an
issue on its own, as `instructsd eval` writes). Plots are SVG (``eval.plots``), so a report needs
no server and no plotting library. All text from users (instructions, notes, labels, config
values) goes through html.escape, because instructions come from datasets and may contain markup.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from instructsd.eval.metrics import ALL_TASKS, LOWER_IS_BETTER, METRIC_TITLES, UNRANKED, format_metric, to_array
from instructsd.eval.plots import bar_chart_svg, curves_svg, loss_svg, sweep_svg, tradeoff_svg
from instructsd.eval.suite import VS_GROUND_TRUTH
from instructsd.files import atomic_write_bytes

# Images smaller than this (longest side, px) are enlarged by a whole factor for viewing;
# nearest-neighbour keeps their pixels honest, which matters when judging 32-64 px test edits.
MIN_VIEW_PX = 160

GROUND_TRUTH = "ground_truth"  # the reference method: shown in tables, never marked best

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
img.cell { width: 128px; height: auto; }
.plots svg { margin: 0 1em 1em 0; }
details { margin: 0.5em 0 1.5em; }
p.lead { font-size: 1.15em; font-weight: 600; max-width: 60em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


# ----------------------------------------------------------------------------
# Images


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

    head = "".join(f"<th>{html.escape(METRIC_TITLES.get(k, k))}</th>" for k in keys)
    # How many photos (clusters) each interval rests on: the bootstrap resamples those, not crops.
    photos = any("n_groups" in row for row in metrics)
    lines = [f"<h2>{html.escape(heading)}</h2><table><tr><th>task</th><th>method</th><th>n</th>"
             f"{'<th>photos</th>' if photos else ''}{head}</tr>"]
    for row in metrics:
        task = row["task"]
        cells = []
        for k in keys:
            sign = -1.0 if k in LOWER_IS_BETTER else 1.0
            is_best = (row["method"] not in references and methods.get(task, 0) > 1 and k not in UNRANKED
                       and sign * row[k] == best[task, k])
            ci = f'<span class="ci">[{format_metric(k, row[f"{k}_lo"])}, {format_metric(k, row[f"{k}_hi"])}]</span>'
            cells.append(f'<td class="num{" best" if is_best else ""}">{format_metric(k, row[k])} {ci}</td>')
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


def _cell(label: str, image: Any) -> str:
    """A grid cell: a path (str) is linked, relative to the report; an image is embedded."""
    if isinstance(image, (str, os.PathLike)):
        return f'<td><a href="{_e(image)}"><img class="cell" src="{_e(image)}" alt="{_e(label)}"></a></td>'
    uri, w, h = _png_data_uri(image)
    return f'<td><img src="{uri}" width="{w}" height="{h}" alt="{_e(label)}"></td>'


def _grids_section(examples: Mapping[str, list[dict[str, Any]]]) -> str:
    """Per task, one row of images per example (input | ground truth | each method) and its instruction."""
    parts = ["<h2>Examples</h2>"] if examples else []
    for task, rows in examples.items():
        parts.append(f"<h3>{_e(task)}</h3>")
        if not rows:
            parts.append("<p>No examples.</p>")
            continue
        # Columns: every label, in the order first seen, so a missing image leaves a gap, not a shift.
        labels: list[str] = []
        for i, ex in enumerate(rows):
            if "images" not in ex:
                raise ValueError(f"examples[{task!r}][{i}] has no 'images'; it has keys {sorted(ex)}")
            labels += [label for label, _ in _pairs(ex["images"]) if label not in labels]
        parts.append('<table class="grid"><tr>' + "".join(f"<th>{_e(c)}</th>" for c in labels) + "</tr>")
        for ex in rows:
            cells = dict(_pairs(ex["images"]))
            parts.append("<tr>" + "".join(_cell(label, cells[label]) if label in cells else "<td></td>"
                                          for label in labels) + "</tr>")
            number = f"#{ex['index']}: " if "index" in ex else ""
            parts.append(f'<tr><td class="instruction" colspan="{len(labels)}">{number}{_e(ex.get("instruction", ""))}</td></tr>')
        parts.append("</table>")
    return "\n".join(parts)


def _generalization_section(rows: list[dict], keys: Sequence[str]) -> str:
    if not rows:
        return ""
    shown = [k for k in ("psnr", "ssim", "clip_dir", "clip_t", "dino") if k in keys]
    head = "".join(f"<th>{_e(METRIC_TITLES.get(k, k))}</th>" for k in shown)
    lines = ["<h2>Instruction generalisation</h2>",
             "<p>The same images and seeds, instructed with paraphrases seen in training vs held out from it "
             "(and, where the split has them, compound tasks). The gap is held_out − seen.</p>",
             f"<table><tr><th>kind</th><th>method</th><th>instruction set</th><th>n</th>{head}</tr>"]
    by = {(r["kind"], r["method"], r["instruction_set"]): r for r in rows}
    for r in rows:
        cells = "".join(f'<td class="num">{format_metric(k, r[k])} <span class="ci">[{format_metric(k, r[k + "_lo"])}, '
                        f'{format_metric(k, r[k + "_hi"])}]</span></td>' for k in shown)
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


def _following_section(results: list[dict]) -> str:
    """One confusion matrix per model: rows the task asked for, columns the task its output is closest to."""
    results = [r for r in results if r]
    if not results:
        return ""
    parts = ["<h2>Instruction following</h2><p>Each held-out input is edited once per photo-operation task; an output "
             "counts as the task whose exact ground truth (for this input and the instructed amount) it is closest to, "
             "or as identity when the input itself is closer. Accuracy: share recognised as the task asked for, "
             "95% interval bootstrapped over photos.</p>"]
    for r in results:
        cands = r["candidates"]
        parts.append(f"<h3>{_e(r['label'])}: {r['accuracy']:.0%} "
                     f'<span class="ci">[{r["accuracy_lo"]:.0%}, {r["accuracy_hi"]:.0%}], {r["n"]} edits, '
                     f"{r['n_photos']} photos</span></h3>")
        head = "".join(f"<th>{_e(c)}</th>" for c in cands)
        body = "".join(f"<tr><th>{_e(asked)}</th>" + "".join(
            f'<td class="num{" best" if c == asked else ""}">{counts[c]}</td>' for c in cands)
            + f'<td class="num">{r["per_task_accuracy"][asked]:.0%}</td></tr>' for asked, counts in r["matrix"].items())
        parts.append(f"<table><tr><th>asked \\ recognised</th>{head}<th>accuracy</th></tr>{body}</table>")
    return "\n".join(parts)


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


def _reproduce_section(config: Mapping | None, seeds: Mapping | None, provenance: Mapping | None) -> str:
    shown = {k: v for k, v in (("config", config), ("seeds", seeds), ("provenance", provenance)) if v is not None}
    if not shown:
        return ""
    text = yaml.safe_dump(_plain(shown), sort_keys=False, allow_unicode=True)
    return ("<h2>Config and provenance</h2>\n<p>This run's config and seeds; package versions; and for every model the "
            "sha256 of its files and the resolved config of the training run that made it (under provenance.models).</p>\n"
            f"<pre>{_e(text)}</pre>")


# ----------------------------------------------------------------------------
# Public


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    summary: list[dict[str, Any]],
    examples: Mapping[str, list[dict[str, Any]]] | None = None,
    keys: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    sweep: Sequence[dict] = (),
    generalization: Sequence[dict] = (),
    curves: Mapping[str, Mapping[str, list]] | None = None,
    loss_curve: list[tuple[int, float]] | None = None,
    tradeoff: tuple[str, str, Mapping[str, list]] | None = None,
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    following: Sequence[dict] = (),
    lead: str | None = None,
) -> Path:
    """Write a self-contained HTML report and return its path.

    path: the .html file to write, or a folder, in which case the file is `report.html` there.
    summary: the rows of `eval.metrics.summarize` (grouped by "task"); keys: the metrics to show
        (default: every metric in the rows); methods: the order that fixes each method's colour.
    examples: per task, dicts with "instruction" (str), optionally "index", and "images", an ordered
        mapping or list of (column label, image) pairs, e.g. [("input", im), ("model", im)]; an
        image given as a relative path is linked, a PIL image or array is embedded.
    sweep / generalization: `compare`'s sweep points and generalisation rows. curves: {metric:
        {series: [(step, value)]}}. loss_curve: (step, loss) pairs; non-finite losses are skipped.
    tradeoff: (x metric, y metric, {series: [(x, y, point label)]}), the dual-guidance sweep's curves
        (``eval.guidance_sweep``), e.g. one series per checkpoint and text guidance.
    notes: lines shown under the title. config, seeds, provenance: dumped as YAML at the end.
    following: instruction-following results (:func:`instructsd.eval.following.instruction_following`),
        one confusion matrix each. lead: one sentence saying what was shown, above everything else.
    """
    out = Path(path)
    if out.suffix.lower() != ".html":
        out = out / "report.html"
    keys = list(keys) if keys is not None else (_metric_keys(summary[0]) if summary else [])
    methods = list(methods) if methods is not None else list(dict.fromkeys(r["method"] for r in summary))
    sections = [f"<h1>{_e(title)}</h1>"]
    if lead:
        sections.append(f'<p class="lead">{_e(lead)}</p>')
    if notes:
        sections.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    # Two tables, so neither is too wide to read: fidelity to the ground truth, then edit strength
    # and instruction following (CLIP metrics that compare with the input and the captions).
    fidelity = [k for k in keys if k in VS_GROUND_TRUTH]
    edit_keys = [k for k in keys if k not in VS_GROUND_TRUTH]
    if not summary or not keys:
        sections.append(_metrics_section([]))
    for heading, subset in (("Fidelity to the ground truth", fidelity), ("Edit and instruction following", edit_keys)):
        if subset and summary:
            rows = [{**{k: r[k] for k in ("task", "method", "n", "n_groups") if k in r},
                     **{f"{k}{s}": r[f"{k}{s}"] for k in subset for s in ("", "_lo", "_hi")}} for r in summary]
            sections.append(_metrics_section(rows, references={GROUND_TRUTH}, heading=heading))
    if GROUND_TRUTH in methods:
        sections.append('<p class="ci">ground_truth is the reference (for teacher-made tasks, the teacher\'s output): '
                        "its pixel metrics are perfect by construction (PSNR capped at 100 dB); its CLIP scores are the "
                        "ceiling a model's edit is measured against. identity returns the input unchanged.</p>")
    # The ground truth scores perfectly against itself; its bar would only squash the others.
    bars = [bar_chart_svg(summary, k, methods, exclude=(GROUND_TRUTH,) if k in VS_GROUND_TRUTH else ()) for k in keys]
    if any(bars):
        sections.append('<h2>Per task</h2><div class="plots">' + "\n".join(b for b in bars if b) + "</div>")
    if curves:
        plots = [curves_svg(series, ylabel=METRIC_TITLES.get(metric, metric)) for metric, series in curves.items()]
        sections.append('<h2>Validation curves</h2><div class="plots">' + "\n".join(p for p in plots if p) + "</div>")
    if loss_curve is not None:
        sections.append(loss_svg(loss_curve))
    if sweep:
        sections.append("<h2>Image-guidance sweep</h2><p>Each point is one image-guidance scale (label), averaged over "
                        "every compared image; text guidance fixed.</p>" + sweep_svg(list(sweep), methods))
    if tradeoff is not None and tradeoff[2]:
        x, y, series = tradeoff
        sections.append("<h2>Dual-guidance sweep</h2><p>Each line is one checkpoint at one text guidance s_T; each "
                        "point one image guidance s_I (label), averaged over the validation rows.</p>"
                        + tradeoff_svg(series, METRIC_TITLES.get(x, x), METRIC_TITLES.get(y, y)))
    sections.append(_generalization_section(list(generalization), keys))
    sections.append(_following_section(list(following)))
    sections.append(_grids_section(examples or {}))
    sections.append(_reproduce_section(config, seeds, provenance))
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")
    atomic_write_bytes(out, page.encode("utf-8"))
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
    atomic_write_bytes(out, buf.getvalue())
    return out
