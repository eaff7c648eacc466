"""The dataset card (README.md with the hub's YAML metadata block) and the samples.png preview.

One card for every build: the mixture builder writes it when it joins its chunks, and
``build_dataset`` (an adapter over that builder) passes its own command and source licenses.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from instructsd.data.degradations import DEGRADATIONS, GROUPS
from instructsd.data.mixture import DEFAULT_COLUMNS, ROW_KEYS

SAMPLES_LICENSE = {"source": "bundled sample photos (scikit-image's skimage/data; scikit-learn's datasets/images)",
                   "license": "scikit-image's: CC0 or public domain, per photo, as scikit-image documents each one; "
                              "scikit-learn's china.jpg and flower.jpg: CC BY 2.0, by Flickr users danielbuechele "
                              "and vultilion (credit them when sharing)"}
UNKNOWN_LICENSE = "unknown to instructsd: state it here before you share the dataset"
MIXTURE_COMMAND = "instructsd data build OUT --mixture mixture.yaml (mixture.yaml is saved beside this card)"
_GRID_EXAMPLES = 4  # (input | edited) pairs per task row in samples.png


def columns(mixture_raw: Mapping) -> dict[str, str]:
    """The names a mixture gives the input, instruction and edited columns."""
    return {**DEFAULT_COLUMNS, **(mixture_raw.get("columns") or {})}


# --- metadata ------------------------------------------------------------------------------


def size_category(rows: int) -> str:
    """The hub's ``size_categories`` bucket for a number of rows."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "10M<n<100M"


def card_metadata(dataset: datasets.DatasetDict, *, sources: Sequence[Mapping[str, str]], command: str,
                  license: str = "other") -> str:
    """The YAML block a hub dataset card starts with (issue 12): license, task categories, sources and
    their licenses, size, splits and the command that built it. ``data push`` uploads it as README.md;
    datasets' push_to_hub then adds its own ``dataset_info``/``configs`` keys to the same block."""
    rows = sum(len(d) for d in dataset.values())
    meta = {
        "pretty_name": "instructsd instruction-editing pairs",
        "license": license,
        "license_details": "Pairs derived from the sources below; each source's license governs what is made from it.",
        "task_categories": ["image-to-image"],
        "language": ["en"],
        "tags": ["image-editing", "instruction-tuning", "instructpix2pix", "instructsd"],
        "size_categories": [size_category(rows)],
        "source_datasets": [str(s["source"]) for s in sources],
        "source_licenses": [{"source": str(s["source"]), "license": str(s["license"])} for s in sources],
        "splits": {name: len(split) for name, split in dataset.items()},
        "builder_command": command,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def source_licenses(mixture_raw: Mapping) -> list[dict[str, str]]:
    """[{source, license}] of every component's images: what instructsd knows, and says when it does not."""
    out: list[dict[str, str]] = []
    for c in mixture_raw.get("components", []):
        src, paired = c.get("source") or {}, c.get("paired") or {}
        if not isinstance(src, Mapping):  # photos passed in from Python
            entry = {"source": str(src), "license": UNKNOWN_LICENSE}
        elif src.get("samples"):
            entry = SAMPLES_LICENSE
        elif "dataset" in src:
            entry = {"source": f"hub dataset {src['dataset']}", "license": "see that dataset's card"}
        elif "folder" in src:
            entry = {"source": f"photos in {src['folder']}", "license": UNKNOWN_LICENSE}
        elif paired:
            where = paired.get("root") or f"{paired.get('input')} / {paired.get('target')}"
            entry = {"source": f"{paired['layout']} pairs at {where}",
                     "license": "the distributing dataset's own terms (check them before sharing)"}
        else:
            continue
        if entry not in out:
            out.append(dict(entry))
    return out


# --- the card ------------------------------------------------------------------------------


def card(dataset: datasets.DatasetDict, mixture_raw: Mapping, skipped: str, *, command: str | None = None,
         licenses: Sequence[Mapping[str, str]] | None = None) -> str:
    """README.md: a YAML metadata block, how it was made, counts per split and task, skips, parameters, examples.

    ``command`` rebuilds the dataset (default: the mixture build); ``licenses``: [{source, license}]
    of the photos when the mixture cannot tell (photos passed in from Python)."""
    cols = columns(mixture_raw)
    splits = list(dataset)
    counts = {split: Counter(dataset[split]["task"]) for split in splits}
    tasks = sorted(set().union(*counts.values()))
    skip_rows = [json.loads(line) for line in skipped.splitlines() if line.strip()]
    reasons = Counter(r["reason"].split(";")[0][:100] for r in skip_rows)
    scheme = mixture_raw.get("seed_scheme", "mixture")
    lines = [
        card_metadata(dataset, sources=licenses or source_licenses(mixture_raw), command=command or MIXTURE_COMMAND),
        "# instructsd instruction-editing dataset",
        "",
        f"Built by instructsd's mixture builder (seed {mixture_raw.get('seed', 0)}, "
        f"{mixture_raw.get('size', 256)} px, instruction policy `{mixture_raw.get('instructions', 'sampled')}`, "
        f"seed scheme `{scheme}`, split rule `{mixture_raw.get('split', 'hash')}`). "
        "Load with `datasets.load_from_disk(path)`.",
        "",
        "Columns: " + ", ".join(f"`{c}`" for c in (*cols.values(), *ROW_KEYS))
        + (". `deferred` rows have an empty instruction: the trainer samples a paraphrase of "
           "the row's `task` each time it uses the row." if mixture_raw.get("instructions") == "deferred" else "."),
        "",
        "| task | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    lines += [f"| {t} | " + " | ".join(str(counts[s][t]) for s in splits) + " |" for t in tasks]
    lines += [f"| **all** | " + " | ".join(str(len(dataset[s])) for s in splits) + " |", ""]
    lines += _splits_note(dataset)
    lines += ["## Components (the mixture, as given)", "", "```yaml",
              yaml.safe_dump(mixture_raw.get("components", []), sort_keys=False).rstrip(), "```", ""]
    used = sorted({(d if isinstance(d, str) else d.get("name"))
                   for c in mixture_raw.get("components", []) for d in c.get("degradations", [])})
    if used:
        lines += ["## Degradation parameter ranges (defaults; overrides are in the components)", ""]
        for name in used:
            for member in GROUPS.get(name, (name,)):
                ranges = ", ".join(f"{k} ∈ [{lo:g}, {hi:g}]" for k, (lo, hi) in DEGRADATIONS[member].ranges.items())
                lines.append(f"- `{member}`: {ranges}")
        lines.append("")
    lines += [f"## Skipped source images: {len(skip_rows)} (details in `skipped.jsonl`)", ""]
    lines += [f"- {n} × {reason}" for reason, n in reasons.most_common(10)]
    lines += ["", "## Examples (input | edited)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def _splits_note(dataset: datasets.DatasetDict) -> list[str]:
    """Where each split's rows come from: official parts, or carved by group (issue 12)."""
    lines = ["## Splits", "",
             "Official parts of paired datasets keep their split (`part` column); `validation` rows "
             "without a part are carved from training pairs by group (`group` column: sequence, scene "
             "or photo), so no group is in two splits.", "",
             "| split | official parts (rows) | groups |", "|---|---|---|"]
    for split, ds in dataset.items():
        parts = Counter(p for p in ds["part"] if p)
        named = ", ".join(f"{p} ({n})" for p, n in sorted(parts.items())) or "—"
        lines.append(f"| {split} | {named} | {len(set(ds['group']))} |")
    return lines + [""]


# --- samples.png ---------------------------------------------------------------------------


def sample_rows(dataset: datasets.DatasetDict, mixture_raw: Mapping) -> dict[str, list]:
    """Up to four (input, edited) arrays per task, from train (validation if train lacks it)."""
    cols = columns(mixture_raw)
    grid: dict[str, list] = {}
    for split in dataset:
        tasks = dataset[split]["task"]
        for i, task in enumerate(tasks):
            if len(grid.setdefault(task, [])) < _GRID_EXAMPLES:
                row = dataset[split][i]
                grid[task].append((np.asarray(row[cols["input_image"]].convert("RGB")),
                                   np.asarray(row[cols["edited_image"]].convert("RGB"))))
    return grid


def samples_grid(examples: dict[str, list[tuple[np.ndarray, np.ndarray]]], cell: int = 128) -> Image.Image:
    """One row per task, labelled, of ``input | edited`` pairs, each image ``cell`` px."""
    label_w, gap, pad = 110, 2, 10
    n = max((len(v) for v in examples.values()), default=0)
    width = label_w + n * (2 * cell + gap + pad)
    canvas = Image.new("RGB", (max(width, label_w), max(1, len(examples)) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (task, pairs) in enumerate(examples.items()):
        top = r * (cell + pad)
        draw.text((4, top + cell // 2 - 6), task, fill="black", font=font)
        for k, pair in enumerate(pairs):
            left = label_w + k * (2 * cell + gap + pad)
            for j, arr in enumerate(pair):
                im = Image.fromarray(arr)
                # Nearest when enlarging so the preview shows the real pixels, not a blur.
                up = im.width < cell
                im = im.resize((cell, cell), Image.Resampling.NEAREST if up else Image.Resampling.LANCZOS)
                canvas.paste(im, (left + j * (cell + gap), top))
    return canvas
