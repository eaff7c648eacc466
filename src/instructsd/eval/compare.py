"""Model vs model vs teacher: the same images, instructions and seeds, scored by one metric suite.

    rows of a split ──► identity (input unchanged) │ ground truth │ teacher model │ model A │ model B …
                         every edit through instructsd.edit.editor.edit_images, row i seeded seed + i
                    ──► per-image metrics ─► per task: mean + 95% bootstrap interval
                    ──► image-guidance sweep (CLIP direction vs CLIP image similarity, per model)
                    ──► instruction generalisation (seen vs held-out paraphrases; single vs compound)
                    ──► run folder: images/, metrics.csv, metrics.json, report.html

The ground truth is scored as a method too: its pixel metrics are perfect by construction, but
its CLIP direction and CLIP-T are the reference a model's edit is measured against. For a task
whose targets were made by a teacher (cartoonize), the ground truth *is* the teacher's output.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from instructsd.data.load import Columns, load_split
from instructsd.edit.editor import EditSettings, edit_images, fit_size, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.eval.evaluate import NO_TASK, instruction_for, select_per_task
from instructsd.eval.features import Example, MetricSuite, captions_for, mean_scores
from instructsd.eval.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, summarize
from instructsd.eval.provenance import provenance
from instructsd.eval.report import _atomic_write

IDENTITY = "identity"
GROUND_TRUTH = "ground_truth"
TEACHER = "teacher"
DATASET_SET = "dataset"  # the instruction stored in each row
INSTRUCTION_SETS = (DATASET_SET, "canonical", "seen", "held_out")


@dataclass
class CompareResult:
    """What a comparison wrote and computed."""

    out: Path
    report: Path
    summary: list[dict]
    per_image: list[dict]
    sweep: list[dict] = field(default_factory=list)
    generalization: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Row:
    index: int
    task: str
    instruction: str
    example: Example
    seed: int
    source: str | None = None  # the photo the row was cropped from: what the bootstrap resamples


# ----------------------------------------------------------------------------
# Names and files


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """{label: model} for CLI arguments "path", "hub/id" or "label=path"; labels are unique."""
    out: dict[str, str] = {}
    for spec in models:
        label, sep, path = str(spec).partition("=")
        if not sep:
            path, label = str(spec), Path(str(spec).rstrip("/")).name or str(spec)
        label = _slug(label)
        if label in (IDENTITY, GROUND_TRUTH, TEACHER):
            raise InstructSDError(f"model label '{label}' is reserved; name the model another way (label=path)")
        base, k = label, 2
        while label in out:
            label, k = f"{base}-{k}", k + 1
        out[label] = path
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def _save_png(image: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _atomic_write(path, buf.getvalue())


def _instructions(rows: list[_Row], which: str, seed: int) -> list[str]:
    """The instruction for each row under one instruction set (seeded per row)."""
    if which == DATASET_SET:
        return [r.instruction for r in rows]
    try:
        from instructsd.data import instructions as bank
    except ImportError as err:
        raise InstructSDError(f"instruction set '{which}' needs instructsd.data.instructions ({err})") from err
    out = []
    for r in rows:
        if which == "canonical":
            out.append(bank.canonical_instruction(r.task))
        elif which in ("seen", "held_out"):
            rng = np.random.default_rng([seed, r.index, 7])  # same draw for every model
            out.append(bank.sample_instruction(r.task, rng, held_out=which == "held_out"))
        else:
            raise InstructSDError(f"unknown instruction set '{which}'; use one of {', '.join(INSTRUCTION_SETS)}")
    return out


def check_sweep(sweep: Sequence[float], settings: EditSettings) -> None:
    """Refuse an image-guidance sweep value that ``settings`` could not take, before any edit."""
    for scale in sweep:
        try:
            replace(settings, image_guidance_scale=float(scale))
        except (TypeError, ValueError):
            raise InstructSDError(f"image-guidance sweep: {scale!r} is not a number") from None
        except InstructSDError as err:
            raise InstructSDError(f"image-guidance sweep: {err}") from None


# ----------------------------------------------------------------------------
# The run


def run_compare(
    models: Mapping[str, str | Path],
    dataset: str | Path,
    out: str | Path,
    *,
    split: str = "validation",
    teacher: str | Path | None = None,
    settings: EditSettings = EditSettings(),
    per_task: int | None = None,
    seed: int = 0,
    suite: MetricSuite | None = None,
    sweep: Sequence[float] = (1.0, 1.5, 2.0),
    instruction_sets: Sequence[str] = (),
    device: str | None = None,
    examples_per_task: int = 4,
    title: str = "instructsd comparison",
    notes: Sequence[str] = (),
    config: Mapping | None = None,
    pipes: Mapping[str, object] | None = None,
    batch_size: int = 8,
    curves: Mapping[str, Mapping[str, list]] | None = None,
    progress: bool = True,
    columns: Columns = Columns(),
) -> CompareResult:
    """Edit and score every model (plus identity, ground truth and an optional teacher model).

    models: {label: hub id or local folder}. pipes: already-loaded pipelines by label, used
    instead of loading (experiments keep their models in memory). instruction_sets: extra
    sets besides each row's own instruction, from ``INSTRUCTION_SETS``, for the
    generalisation table. sweep: image-guidance scales for the CLIP trade-off curve (empty
    to skip; needs CLIP). batch_size: images per pipeline call (results do not depend on it:
    every image has its own seeded generator). curves: {metric: {series: [(step, value)]}},
    validation curves drawn in the report and stored in metrics.json. columns: the dataset's
    column names (TrainConfig's ``*_column`` keys); dataset: a saved folder, parquet shards or
    a hub id (see ``instructsd.data.load``).
    """
    out = Path(out)
    if not models and teacher is None:
        raise InstructSDError("compare needs at least one model (--models A B ...)")
    check_sweep(sweep, settings)
    unknown = [s for s in instruction_sets if s not in INSTRUCTION_SETS]
    if unknown:
        raise InstructSDError(f"unknown instruction set '{unknown[0]}'; use some of {', '.join(INSTRUCTION_SETS[1:])}")
    methods = dict(models)
    if teacher is not None:
        methods = {TEACHER: str(teacher), **methods}
    suite = suite or MetricSuite.load(None, None, None)
    data = load_split(dataset, split, columns)
    picked = select_per_task(data, per_task, columns.task_column)
    if not picked:
        raise InstructSDError(f"dataset '{dataset}' split '{split}' has no rows to compare on")
    all_notes = [*notes, *suite.notes]

    rows: list[_Row] = []
    for i in picked:
        raw = data[i]
        task = str(raw.get(columns.task_column) or NO_TASK)
        source = fit_size(raw[columns.input_column].convert("RGB"))
        target = raw[columns.edited_column].convert("RGB").resize(source.size, Image.LANCZOS)
        cin, cout = captions_for(task, raw)
        photo = raw.get(columns.group_column)
        rows.append(_Row(i, task, instruction_for(raw[columns.prompt_column], task), Example(source, target, cin, cout),
                         seed + i, None if photo is None else str(photo)))
    if suite.clip is not None and any(r.example.input_caption is None for r in rows):
        missing = sorted({r.task for r in rows if r.example.input_caption is None})
        raise InstructSDError(f"no captions for task(s) {', '.join(missing)}: add input_caption/output_caption columns "
                              f"to the dataset or skip CLIP metrics with --clip none")

    # Inputs and ground truth are written once; identity links to the input.
    for r in rows:
        _save_png(r.example.source, out / "images" / "input" / f"{r.index:05d}.png")
        _save_png(r.example.target, out / "images" / GROUND_TRUTH / f"{r.index:05d}.png")

    per_image: list[dict] = []

    def score(method: str, outputs: list[Image.Image], folder: str, which: str, instructions: list[str],
              scale: float | None) -> list[dict]:
        scored = []
        for r, image, text in zip(rows, outputs, instructions):
            rel = f"images/{folder}/{r.index:05d}.png"
            if folder not in ("input", GROUND_TRUTH):
                _save_png(image, out / rel)
            scored.append({"index": r.index, "task": r.task, "source": r.source, "method": method, "instruction_set": which,
                           "image_guidance": scale, "instruction": text, "seed": r.seed, "image": rel,
                           **suite.score(image, r.example, key=r.index)})
        return scored

    dataset_texts = [r.instruction for r in rows]
    per_image += score(IDENTITY, [r.example.source for r in rows], "input", DATASET_SET, dataset_texts, None)
    per_image += score(GROUND_TRUTH, [r.example.target for r in rows], GROUND_TRUTH, DATASET_SET, dataset_texts, None)

    sweep_points: list[dict] = []
    sweep_rows: list[dict] = []
    if sweep and suite.clip is None:
        all_notes.append("image-guidance sweep skipped: it plots CLIP metrics and no CLIP model was loaded (--clip).")
        sweep = ()
    sets = [s for s in instruction_sets if s != DATASET_SET]
    gen_rows: list[dict] = []
    bar = tqdm(total=len(methods) * (1 + len(sets) + len(sweep)), desc="compare", disable=not progress, dynamic_ncols=True)
    for label, source in methods.items():
        pipe = (pipes or {}).get(label) or load_pipeline(source, device=device)
        seeds = [r.seed for r in rows]
        images = edit_images(pipe, [r.example.source for r in rows], dataset_texts, settings, seeds=seeds, batch_size=batch_size)
        scored = score(label, images, _slug(label), DATASET_SET, dataset_texts, settings.image_guidance_scale)
        per_image += scored
        gen_rows += scored
        bar.update(1)
        for which in sets:
            texts = _instructions(rows, which, seed)
            images = edit_images(pipe, [r.example.source for r in rows], texts, settings, seeds=seeds, batch_size=batch_size)
            gen_rows += score(label, images, f"{which}/{_slug(label)}", which, texts, settings.image_guidance_scale)
            bar.update(1)
        for scale in sweep:
            if scale == settings.image_guidance_scale:
                pts = scored
            else:
                images = edit_images(pipe, [r.example.source for r in rows], dataset_texts,
                                     replace(settings, image_guidance_scale=float(scale)), seeds=seeds,
                                     batch_size=batch_size)
                pts = score(label, images, f"sweep/{_slug(label)}/ig{scale:g}", "sweep", dataset_texts, float(scale))
                sweep_rows += pts  # kept apart from the main table: other settings than every other method
            sweep_points.append({"method": label, "image_guidance": float(scale), "n": len(pts),
                                 **mean_scores(pts, ("clip_image", "clip_dir", "clip_t", "psnr"))})
            bar.update(1)
        del pipe
    bar.close()

    keys = suite.names
    summary = summarize(per_image, metric_keys=keys)
    generalization = _generalization(gen_rows, keys) if sets else []

    prov = provenance(methods, dataset)
    run_config = {
        "models": {k: str(v) for k, v in methods.items()}, "dataset": str(dataset), "split": split,
        "columns": asdict(columns), "per_task": per_task, "rows": [r.index for r in rows], "settings": asdict(settings),
        "sweep": list(sweep), "instruction_sets": [DATASET_SET, *sets], "metric_models": suite.sources,
        **(dict(config) if config else {}),
    }
    seeds_info = {"base": seed, "rule": "row i is edited with seed + i by every method and instruction set",
                  "instruction_sampling": "numpy default_rng([seed, row, 7])",
                  "bootstrap": {"seed": BOOTSTRAP_SEED, "resamples": BOOTSTRAP_RESAMPLES, "interval": "95% percentile",
                                "resamples_groups_of": columns.group_column}}
    doc = {"title": title, "config": run_config, "seeds": seeds_info, "provenance": prov, "metrics": keys,
           "notes": all_notes, "summary": summary, "per_image": per_image, "sweep": sweep_points,
           "generalization": generalization, "generalization_per_image": [r for r in gen_rows if r["instruction_set"] != DATASET_SET],
           "sweep_per_image": sweep_rows, "curves": curves or {}}
    _atomic_write(out / "metrics.json", json.dumps(doc, indent=2, default=str).encode())
    _write_csv(out / "metrics.csv", per_image + doc["generalization_per_image"] + sweep_rows)

    from instructsd.eval.compare_report import write_compare_report

    examples = _grid_rows(rows, list(methods), examples_per_task)
    report = write_compare_report(out / "report.html", title=title, summary=summary, keys=keys, examples=examples,
                                  methods=[IDENTITY, GROUND_TRUTH, *methods], sweep=sweep_points,
                                  generalization=generalization, notes=all_notes, config=run_config,
                                  seeds=seeds_info, provenance=prov, curves=curves)
    return CompareResult(out, report, summary, per_image, sweep_points, generalization, all_notes)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue().encode())


def _grid_rows(rows: list[_Row], methods: list[str], per_task: int) -> dict[str, list[dict]]:
    """Per task, up to ``per_task`` grid rows of relative image paths: input | ground truth | each model."""
    grids: dict[str, list[dict]] = {}
    for r in rows:
        shown = grids.setdefault(r.task, [])
        if len(shown) >= per_task:
            continue
        cells = [("input", f"images/input/{r.index:05d}.png"), ("ground truth", f"images/{GROUND_TRUTH}/{r.index:05d}.png")]
        cells += [(m, f"images/{_slug(m)}/{r.index:05d}.png") for m in methods]
        shown.append({"instruction": r.instruction, "index": r.index, "images": cells})
    return grids


def _generalization(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    """Per model, instruction set and instruction kind (single / compound task): mean and 95% interval."""
    tagged = [dict(r, kind="compound" if "+" in r["task"] else "single") for r in rows]
    out = []
    for kind in ("single", "compound"):
        subset = [dict(r, method=r["method"]) for r in tagged if r["kind"] == kind]
        if not subset:
            continue
        for row in summarize(subset, group_key="instruction_set", metric_keys=keys):
            if row["instruction_set"] != "all":
                out.append({"kind": kind, **row})
    return out
