"""The one scorer: models vs the identity and ground-truth baselines (and a teacher), on the same
images, instructions and seeds, scored by one metric suite.

`instructsd compare` is this with several models and every metric; `instructsd eval` is this with
one model ("model") and the PSNR/SSIM suite. In-training validation and the tiny base's card score
their edits with :func:`score_outputs` on the same rows (``eval.rows``) and aggregate them with the
same ``eval.metrics.summarize``.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from instructsd.data.load import Columns, load_split
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.eval.edit_metrics import EDIT_METRICS, collapse_note
from instructsd.eval.following import following_tasks, instruction_following
from instructsd.eval.metrics import ALL_TASKS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, summarize
from instructsd.eval.provenance import provenance
from instructsd.eval.report import GROUND_TRUTH, write_report
from instructsd.eval.rows import DATASET_SET, INSTRUCTION_SETS, SKIPPED_ROWS, Example, check_rows, paraphrases, prepare_rows, skipped_note
from instructsd.eval.suite import MetricSuite, mean_scores
from instructsd.files import atomic_write_bytes

IDENTITY = "identity"
TEACHER = "teacher"


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
    skipped: list[dict] = field(default_factory=list)  # rows whose images failed to decode: {index, reason}


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
    atomic_write_bytes(path, buf.getvalue())


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
# Scoring: every caller's per-image rows come from here


def edit_rows(pipe, rows: Sequence[Example], settings: EditSettings, texts: Sequence[str] | None = None, *,
              batch_size: int = 8, progress=None) -> list[Image.Image]:
    """Edit every example with its own seed, by its own instruction or by ``texts``."""
    return edit_images(pipe, [r.source for r in rows], [r.instruction for r in rows] if texts is None else list(texts),
                       settings, seeds=[r.seed for r in rows], batch_size=batch_size, progress=progress)


def score_outputs(method: str, outputs: Sequence[Image.Image], rows: Sequence[Example], suite: MetricSuite, *,
                  texts: Sequence[str] | None = None, instruction_set: str = DATASET_SET, scale: float | None = None,
                  paths: Sequence[str] | None = None) -> list[dict]:
    """One per-image row per output: where it came from, how it was made, and every metric of ``suite``.

    These rows are what ``eval.metrics.summarize`` aggregates for every caller.
    """
    texts = [r.instruction for r in rows] if texts is None else texts
    scored = []
    for k, (r, image, text) in enumerate(zip(rows, outputs, texts)):
        scored.append({"index": r.index, "task": r.task, "source": r.photo, "photo": r.photo, "method": method,
                       "instruction_set": instruction_set, "image_guidance": scale, "instruction": text, "seed": r.seed,
                       **({"image": paths[k]} if paths is not None else {}), **suite.score(image, r, key=r.index)})
    return scored


def score_model(pipe, rows: Sequence[Example], settings: EditSettings, suite: MetricSuite | None = None, *,
                label: str = "model", batch_size: int = 8) -> list[dict]:
    """The model's rows and the identity baseline's (the input returned unchanged), PSNR/SSIM by default."""
    suite = suite or MetricSuite.headline()
    return [*score_outputs(IDENTITY, [r.source for r in rows], rows, suite),
            *score_outputs(label, edit_rows(pipe, rows, settings, batch_size=batch_size), rows, suite,
                           scale=settings.image_guidance_scale)]


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
    embed_images: bool = False,
    following: int = 24,
    lead: str | Callable[[list[dict]], str] | None = None,
) -> CompareResult:
    """Edit and score every model (plus identity, ground truth and an optional teacher model).

    models: {label: hub id or local folder}. pipes: already-loaded pipelines by label, used
    instead of loading (experiments keep their models in memory). suite: the metrics (default:
    every pixel metric, no network). instruction_sets: extra sets besides each row's own
    instruction, from ``INSTRUCTION_SETS``, for the generalisation table. sweep: image-guidance
    scales for the CLIP trade-off curve (empty to skip; needs CLIP). batch_size: images per
    pipeline call (results do not depend on it: every image has its own seeded generator).
    curves: {metric: {series: [(step, value)]}}, validation curves drawn in the report and stored
    in metrics.json. columns: the dataset's column names (TrainConfig's ``*_column`` keys);
    dataset: a saved folder, parquet shards or a hub id (see ``instructsd.data.load``).
    embed_images: put the example grids into report.html itself (a page that travels alone, as
    `instructsd eval` writes it) rather than linking the run folder's images.
    following: held-out inputs for the instruction-following confusion matrix (issue 15,
    :mod:`instructsd.eval.following`), run when the split has two or more photo-operation tasks; 0 skips it.
    lead: the report's opening sentence, or a function of the summary rows that writes it.
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
    skipped: list[dict] = []
    rows = prepare_rows(load_split(dataset, split, columns), per_task=per_task, seed=seed, columns=columns,
                        max_side=settings.max_side, skipped=skipped)
    check_rows(rows, skipped, dataset, split)
    all_notes = [*notes, *suite.notes, *([skipped_note(skipped)] if skipped else [])]
    if suite.clip is not None and any(r.input_caption is None for r in rows):
        missing = sorted({r.task for r in rows if r.input_caption is None})
        raise InstructSDError(f"no captions for task(s) {', '.join(missing)}: add input_caption/output_caption columns "
                              f"to the dataset or skip CLIP metrics with --clip none")

    # Inputs and ground truth are written once; identity links to the input.
    def paths(folder: str) -> list[str]:
        return [f"images/{folder}/{r.index:05d}.png" for r in rows]

    def saved(images: list[Image.Image], folder: str) -> list[str]:
        for image, rel in zip(images, paths(folder)):
            _save_png(image, out / rel)
        return paths(folder)

    per_image = score_outputs(IDENTITY, [r.source for r in rows], rows, suite,
                              paths=saved([r.source for r in rows], "input"))
    per_image += score_outputs(GROUND_TRUTH, [r.target for r in rows], rows, suite,
                               paths=saved([r.target for r in rows], GROUND_TRUTH))
    outputs: dict[str, list[Image.Image]] = {}  # the main table's edits, for embedded grids

    sweep_points: list[dict] = []
    sweep_rows: list[dict] = []
    if sweep and suite.clip is None:
        all_notes.append("image-guidance sweep skipped: it plots CLIP metrics and no CLIP model was loaded (--clip).")
        sweep = ()
    sets = [s for s in instruction_sets if s != DATASET_SET]
    gen_rows: list[dict] = []
    follow: list[dict] = []
    follow_tasks = following_tasks(rows) if following else []
    bar = tqdm(total=len(methods) * (1 + len(sets) + len(sweep)), desc="compare", disable=not progress, dynamic_ncols=True)
    for label, source in methods.items():
        pipe = (pipes or {}).get(label) or load_pipeline(source, device=device)
        outputs[label] = edit_rows(pipe, rows, settings, batch_size=batch_size)
        scored = score_outputs(label, outputs[label], rows, suite, scale=settings.image_guidance_scale,
                               paths=saved(outputs[label], _slug(label)))
        per_image += scored
        gen_rows += scored
        bar.update(1)
        for which in sets:
            texts = paraphrases(rows, which, seed)
            images = edit_rows(pipe, rows, settings, texts, batch_size=batch_size)
            gen_rows += score_outputs(label, images, rows, suite, texts=texts, instruction_set=which,
                                      scale=settings.image_guidance_scale, paths=saved(images, f"{which}/{_slug(label)}"))
            bar.update(1)
        for scale in sweep:
            if scale == settings.image_guidance_scale:
                pts = scored
            else:
                images = edit_rows(pipe, rows, replace(settings, image_guidance_scale=float(scale)), batch_size=batch_size)
                pts = score_outputs(label, images, rows, suite, instruction_set="sweep", scale=float(scale),
                                    paths=saved(images, f"sweep/{_slug(label)}/ig{scale:g}"))
                sweep_rows += pts  # kept apart from the main table: other settings than every other method
            sweep_points.append({"method": label, "image_guidance": float(scale), "n": len(pts),
                                 **mean_scores(pts, ("clip_image", "clip_dir", "clip_t", "psnr"))})
            bar.update(1)
        if len(follow_tasks) >= 2:
            follow.append(instruction_following(pipe, rows, settings, tasks=follow_tasks, seed=seed, max_inputs=following,
                                                batch_size=batch_size, label=label))
        del pipe
    bar.close()

    keys = suite.names
    summary = summarize(per_image, metric_keys=keys)
    all_notes += collapse_notes(summary)
    generalization = _generalization(gen_rows, keys) if sets else []

    prov = provenance(methods, dataset)
    run_config = {
        "models": {k: str(v) for k, v in methods.items()}, "dataset": str(dataset), "split": split,
        "columns": asdict(columns), "per_task": per_task, "rows": [r.index for r in rows], "settings": asdict(settings),
        "sweep": list(sweep), "instruction_sets": [DATASET_SET, *sets], "metric_models": suite.sources,
        **(dict(config) if config else {}),
    }
    seeds_info = {"base": seed, "rule": "row i is edited with seed + i by every method and instruction set",
                  "instruction_sampling": "numpy default_rng([seed, row]) (instructsd.eval.rows.paraphrases)",
                  "bootstrap": {"seed": BOOTSTRAP_SEED, "resamples": BOOTSTRAP_RESAMPLES, "interval": "95% percentile",
                                "resamples_groups_of": columns.group_column}}
    # settings, seed, columns and metric_models also stand at the top, where `instructsd eval` wrote them.
    doc = {"title": title, "config": run_config, "settings": asdict(settings), "seed": seed, "columns": asdict(columns),
           "metric_models": suite.sources, "seeds": seeds_info, "provenance": prov, "metrics": keys,
           "notes": all_notes, "summary": summary, "per_image": per_image, "sweep": sweep_points,
           "generalization": generalization, "generalization_per_image": [r for r in gen_rows if r["instruction_set"] != DATASET_SET],
           "sweep_per_image": sweep_rows, "curves": curves or {},
           **({"following": follow} if follow else {})}
    atomic_write_bytes(out / "metrics.json", json.dumps({**doc, "skipped_rows": skipped}, indent=2, default=str).encode())
    atomic_write_bytes(out / SKIPPED_ROWS, "".join(json.dumps(r) + "\n" for r in skipped).encode())
    _write_csv(out / "metrics.csv", per_image + doc["generalization_per_image"] + sweep_rows)

    examples = _grid_rows(rows, outputs, examples_per_task, embed_images)
    report = write_report(out / "report.html", title=title, summary=summary, keys=keys, examples=examples,
                          methods=[IDENTITY, GROUND_TRUTH, *methods], sweep=sweep_points,
                          generalization=generalization, notes=all_notes, config=run_config,
                          seeds=seeds_info, provenance=prov, curves=curves, following=follow,
                          lead=lead(summary) if callable(lead) else lead)
    return CompareResult(out, report, summary, per_image, sweep_points, generalization, all_notes, skipped)


def collapse_notes(summary: list[dict]) -> list[str]:
    """A warning per model whose outputs mostly returned their input (``eval.edit_metrics``; issue 16)."""
    notes = (collapse_note(r["method"], r["identity_rate"]) for r in summary
             if r["task"] == ALL_TASKS and r["method"] not in (IDENTITY, GROUND_TRUTH) and "identity_rate" in r)
    return [n for n in notes if n]


def format_table(summary: list[dict], keys: Sequence[str] = ("psnr", "ssim", *EDIT_METRICS)) -> str:
    """The summary as an aligned text table for the terminal."""
    keys = [k for k in keys if any(k in r for r in summary)]
    lines = [f"{'task':<12} {'method':<16} {'n':>4} {'photos':>6} " + " ".join(f"{k:>{max(9, len(k))}}" for k in keys)]
    for row in summary:
        lines.append(f"{row['task']:<12} {row['method']:<16} {row['n']:>4} {row['n_groups']:>6} "
                     + " ".join(f"{row[k]:>{max(9, len(k))}.3f}" for k in keys))
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _grid_rows(rows: list[Example], outputs: Mapping[str, list[Image.Image]], per_task: int,
               embed: bool) -> dict[str, list[dict]]:
    """Per task, up to ``per_task`` grid rows, input | ground truth | each model: relative image paths,
    or the images themselves when ``embed``."""
    grids: dict[str, list[dict]] = {}
    for k, r in enumerate(rows):
        shown = grids.setdefault(r.task, [])
        if len(shown) >= per_task:
            continue
        if embed:
            cells = [("input", r.source), ("ground truth", r.target), *((m, images[k]) for m, images in outputs.items())]
        else:
            cells = [("input", f"images/input/{r.index:05d}.png"), ("ground truth", f"images/{GROUND_TRUTH}/{r.index:05d}.png")]
            cells += [(m, f"images/{_slug(m)}/{r.index:05d}.png") for m in outputs]
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
