"""Offline benchmark runners: MagicBrush and the Emu Edit test set, on local copies (issue 16, item 4).

    local copy (parquet shards as on the hub, or a save_to_disk folder)
      ──► plan: MagicBrush sessions turn by turn (img_id, turn_index), Emu Edit row by row
      ──► edit every row with instructsd.edit.editor.edit_images; row i is seeded seed + i;
          every output saved as it is made (a killed run resumes: saved outputs are kept)
      ──► score every saved output (instructsd.eval.bench_metrics: pinned definitions)
      ──► out/: images/, rows.jsonl, rows.csv, metrics.json (means, 95% cluster-bootstrap
          intervals, fingerprints of each metric's model and settings, provenance)

Schemas read (column names as published):

- MagicBrush: img_id, turn_index, source_img, mask_img, instruction, target_img. Multi-turn
  (``turns="multi"``, the benchmark's multi-turn setting): turn 1 edits ``source_img``, turn k
  edits the model's own saved output of turn k-1 of the same img_id. ``turns="single"`` (its
  single-turn setting): every turn edits its own ``source_img`` (the previous turn's ground truth).
  Metrics are reported per turn, pooled over all turns, and on each session's final turn;
  intervals resample whole sessions (img_id). ``mask_img`` is read by no metric: MagicBrush's
  metrics are whole-image.
- Emu Edit test set: instruction, image, task, split, idx, hash, input_caption, output_caption.
  Metrics per task and pooled; intervals resample input images (rows sharing an input picture).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from instructsd.data.load import HUB_ID, load_split, open_saved
from instructsd.edit.editor import EditSettings, default_device, edit_images, load_pipeline
from instructsd.edit.io import save_png
from instructsd.errors import InstructSDError
from instructsd.eval.bench_metrics import DEFAULT_CLIP, DEFAULT_DINO, EMU_EDIT, MAGICBRUSH, METRICS, BenchScorer
from instructsd.eval.metrics import summarize
from instructsd.eval.provenance import machine, model_hashes, package_versions
from instructsd.files import OUTPUT_MARKER, atomic_write_bytes, atomic_write_text, is_output_folder, mark_output_folder

SCHEMAS = {
    MAGICBRUSH: ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img"),
    EMU_EDIT: ("instruction", "image", "task", "split", "idx", "hash", "input_caption", "output_caption"),
}
TURN_MODES = ("multi", "single")
SPLIT_ORDER = ("test", "dev", "validation", "train")  # --split auto: the first one the copy has
CAPTION_COLUMNS = ("output_caption", "local_description", "local_caption", "caption")  # --caption-column auto
COMMAND = "instructsd bench"
RUN_FILE = "bench.json"  # what produced the saved outputs; a resume must match it
IMAGES = "images"
SOURCE = "source"  # a row's input was its dataset image (not an earlier output)


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run; the fields are `instructsd bench`'s options."""

    model: str
    dataset: str
    out: Path
    split: str = "auto"  # a split name, or auto: the first of SPLIT_ORDER the copy has
    limit: int | None = None  # MagicBrush: the first N sessions (img_ids); Emu Edit: the first N rows
    settings: EditSettings = EditSettings(max_side=512)  # max_side is --resolution
    seed: int = 0  # row i is edited with seed + i
    turns: str = "multi"  # MagicBrush: multi (chain the model's own outputs) or single
    batch_size: int = 1
    caption_column: str = "auto"  # MagicBrush's local captions for CLIP-T (none: skip CLIP-T)
    clip: str | None = None  # None: the benchmark's default checkpoint (bench_metrics.DEFAULT_CLIP)
    dino: str | None = None
    device: str | None = None
    dtype: str = "fp32"
    overwrite: bool = False  # start over in a folder an earlier bench run wrote

    def __post_init__(self) -> None:
        if self.turns not in TURN_MODES:
            raise InstructSDError(f"unknown --turns '{self.turns}'; use {' or '.join(TURN_MODES)}")
        if self.limit is not None and self.limit < 1:
            raise InstructSDError(f"--limit must be >= 1 (got {self.limit})")
        if self.batch_size < 1:
            raise InstructSDError(f"--batch-size must be >= 1 (got {self.batch_size})")


@dataclass
class Job:
    """One edit: which row, what it edits, and where its output goes."""

    row: int  # index in the split
    group: str  # img_id (MagicBrush) or task (Emu Edit)
    turn: int
    instruction: str
    seed: int
    output: str  # relative to out/
    input: str  # SOURCE, or the relative path of the output it edits


@dataclass
class BenchResult:
    out: Path
    metrics: dict
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    edited: int = 0  # outputs made by this run (the rest were resumed)


# ----------------------------------------------------------------------------
# Reading the local copy


def available_splits(dataset: str) -> list[str]:
    """The splits of a local copy, as datasets names them (hub shards keep their names: MagicBrush has "dev")."""
    path = Path(dataset)
    if not path.exists():
        hint = " (a hub id: download it first, e.g. huggingface-cli download --repo-type dataset)" if HUB_ID.match(dataset) else ""
        raise InstructSDError(f"no dataset at '{dataset}'{hint}; --dataset takes a local folder or parquet file")
    if path.is_file():
        return ["train"]  # load_split reads a single .parquet file as 'train'
    if (path / "dataset_dict.json").is_file():
        return list(open_saved(path))
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        found = DataFilesDict.from_patterns(get_data_patterns(str(path.absolute())), base_path=str(path.absolute()))
    except FileNotFoundError:
        return []
    return [split for split, files in found.items() if any(str(f).endswith(".parquet") for f in files)]


def read_split(benchmark: str, dataset: str, split: str = "auto"):
    """(rows, split name) of ``dataset``, checked to have the benchmark's published columns."""
    have = available_splits(str(dataset))
    if split == "auto":
        split = next((s for s in SPLIT_ORDER if s in have), None)
        if split is None:
            raise InstructSDError(f"found no split in '{dataset}'; give parquet shards (test-*.parquet, "
                                  f"dev-*.parquet, ...) or a save_to_disk folder, or pass --split")
    elif split not in have:
        raise InstructSDError(f"'{dataset}' has no split '{split}' (it has: {', '.join(have) or 'none'}); pass --split")
    rows = load_split(str(dataset), split, columns=[])
    missing = [c for c in SCHEMAS[benchmark] if c not in rows.column_names and c != "mask_img"]
    if missing:
        raise InstructSDError(f"'{dataset}' split '{split}' lacks the {benchmark} column(s) {', '.join(missing)} "
                              f"(has {', '.join(rows.column_names)}); the published schema is {', '.join(SCHEMAS[benchmark])}")
    return rows, split


def _safe(name: object) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name)) or "_"


def plan(benchmark: str, rows, options: BenchOptions) -> list[list[Job]]:
    """The jobs in waves: every job of a wave may run once the waves before it are saved.

    MagicBrush multi-turn needs turn k-1 saved before turn k, so wave k holds every session's
    turn k; single-turn and Emu Edit are one wave.
    """
    if benchmark == EMU_EDIT:
        n = len(rows) if options.limit is None else min(options.limit, len(rows))
        tasks, texts = rows["task"][:n], rows["instruction"][:n]
        return [[Job(i, str(tasks[i]), 1, str(texts[i]), options.seed + i, f"{IMAGES}/{i:05d}.png", SOURCE)
                 for i in range(n)]]
    sessions: dict[str, dict[int, int]] = {}
    for i, (img_id, turn) in enumerate(zip(rows["img_id"], rows["turn_index"])):
        turns = sessions.setdefault(str(img_id), {})
        if int(turn) in turns:
            raise InstructSDError(f"img_id {img_id} has turn_index {turn} twice (rows {turns[int(turn)]} and {i})")
        turns[int(turn)] = i
    chosen = list(sessions.items())[: options.limit]
    texts = rows["instruction"]
    waves: list[list[Job]] = []
    for img_id, turns in chosen:
        order = sorted(turns)
        if order != list(range(1, len(order) + 1)):
            raise InstructSDError(f"img_id {img_id} has turns {order}; MagicBrush sessions number their turns 1, 2, ...")
        previous = SOURCE
        for k in order:
            i = turns[k]
            job = Job(i, img_id, k, str(texts[i]), options.seed + i, f"{IMAGES}/{_safe(img_id)}_{k}.png",
                      previous if options.turns == "multi" else SOURCE)
            wave = k - 1 if options.turns == "multi" else 0
            waves.extend([] for _ in range(wave + 1 - len(waves)))
            waves[wave].append(job)
            previous = job.output
    return waves


# ----------------------------------------------------------------------------
# The output folder: new, empty, or an earlier bench run of the same settings (resumed)


def _run_record(benchmark: str, options: BenchOptions, split: str, model_sha: dict) -> dict:
    """What decides the outputs; a folder holding outputs made otherwise is not resumed."""
    return {"command": f"{COMMAND} {benchmark}", "model": options.model, "model_sha256": model_sha,
            "dataset": str(Path(options.dataset).absolute()), "split": split, "turns": options.turns,
            "seed": options.seed, "dtype": options.dtype, "settings": dataclasses.asdict(options.settings)}


def open_out(out: Path, record: dict, overwrite: bool) -> None:
    """Refuse a folder we did not write; resume one with the same run record; restart on ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise InstructSDError(f"--out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        run_file = out / RUN_FILE
        if not is_output_folder(out) or not run_file.is_file():
            raise InstructSDError(f"--out {out} already holds files `{COMMAND}` did not write (no {OUTPUT_MARKER} and "
                                  f"{RUN_FILE}); choose a new or empty folder")
        earlier = json.loads(run_file.read_text())
        if earlier != record:
            if not overwrite:
                changed = sorted(k for k in {*earlier, *record} if earlier.get(k) != record.get(k))
                raise InstructSDError(f"--out {out} holds a bench run with other {', '.join(changed)}; pass --overwrite "
                                      "to replace its outputs, or choose another folder")
            for path in sorted((out / IMAGES).glob("*")) if (out / IMAGES).is_dir() else []:
                path.unlink()
    mark_output_folder(out, COMMAND)
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))


# ----------------------------------------------------------------------------
# Editing


def _input_image(job: Job, rows, column: str, out: Path) -> Image.Image:
    if job.input == SOURCE:
        return rows[job.row][column].convert("RGB")
    with Image.open(out / job.input) as im:  # the model's own earlier output, as saved
        return im.convert("RGB")


def edit_all(waves: list[list[Job]], rows, column: str, options: BenchOptions, pipe_factory: Callable,
             progress: Callable[[int, int], None] | None = None) -> int:
    """Edit every job whose output is not saved yet, wave by wave; return how many were edited.

    ``progress(n, total)`` is called as jobs finish (resumed ones count as finished).
    """
    total = sum(len(wave) for wave in waves)
    images = rows.select_columns([column])
    pipe, made = None, 0
    meta = {"model": options.model, **dataclasses.asdict(options.settings)}
    for wave in waves:
        todo = [job for job in wave if not (options.out / job.output).is_file()]
        if progress is not None and len(todo) < len(wave):
            progress(len(wave) - len(todo), total)  # resumed
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start:start + options.batch_size]
            pipe = pipe or pipe_factory()
            inputs = [_input_image(job, images, column, options.out) for job in chunk]
            outputs = edit_images(pipe, inputs, [j.instruction for j in chunk], options.settings,
                                  seeds=[j.seed for j in chunk], batch_size=options.batch_size)
            for job, image in zip(chunk, outputs):
                save_png(image, options.out / job.output, {**meta, "row": job.row, "instruction": job.instruction,
                                                           "seed": job.seed, "input": job.input})
            made += len(chunk)
            if progress is not None:
                progress(len(chunk), total)
    return made


# ----------------------------------------------------------------------------
# Scoring and summaries


def _caption_column(rows, wanted: str) -> str | None:
    if wanted == "auto":
        return next((c for c in CAPTION_COLUMNS if c in rows.column_names), None)
    if wanted.lower() == "none":
        return None
    if wanted not in rows.column_names:
        raise InstructSDError(f"--caption-column {wanted}: no such column (has {', '.join(rows.column_names)})")
    return wanted


def _pixels_digest(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes() + repr(image.size).encode()).hexdigest()[:16]


def score_all(benchmark: str, jobs: list[Job], rows, scorer: BenchScorer, out: Path,
              caption_column: str | None) -> list[dict]:
    """One record per job: its identity, its input and output files, and every computed metric."""
    records = []
    for job in sorted(jobs, key=lambda j: j.row):  # in the split's order, whatever order the waves edited in
        raw = rows[job.row]
        with Image.open(out / job.output) as im:
            output = im.convert("RGB")
        record = {"row": job.row, "instruction": job.instruction, "seed": job.seed, "input": job.input,
                  "output": job.output}
        if benchmark == MAGICBRUSH:
            record = {"img_id": job.group, "turn": job.turn, **record}
            caption = raw[caption_column] if caption_column else None
            record.update(scorer.magicbrush(output, raw["target_img"], caption))
        else:
            source = raw["image"]
            record = {"idx": raw["idx"], "task": job.group, "hash": raw["hash"],
                      "image_digest": _pixels_digest(source), **record}
            record.update(scorer.emu_edit(output, source, str(raw["input_caption"]), str(raw["output_caption"])))
        records.append(record)
    return records


def _table(rows: list[dict], keys: list[str], group_key: str, cluster_key: str) -> dict[str, dict]:
    """{group: {n, n_groups, metric: {mean, lo, hi}}} with the pooled group "all"."""
    if not rows:
        return {}
    tagged = [{**r, group_key: str(r[group_key]), "method": "model"} for r in rows]
    out = {}
    for s in summarize(tagged, group_key=group_key, metric_keys=keys, cluster_key=cluster_key):
        out[s[group_key]] = {"n": s["n"], "n_groups": s["n_groups"],
                             **{k: {"mean": s[k], "lo": s[f"{k}_lo"], "hi": s[f"{k}_hi"]} for k in keys}}
    return out


def summarise(benchmark: str, records: list[dict], keys: list[str]) -> dict:
    """MagicBrush: per turn, all turns, final turn (cluster: img_id). Emu Edit: per task and all (cluster: input image)."""
    if benchmark == EMU_EDIT:
        return {"per_task": _table(records, keys, "task", "image_digest")}
    per_turn = _table(records, keys, "turn", "img_id")
    last: dict[str, dict] = {}
    for r in records:
        if r["turn"] >= last.get(r["img_id"], {"turn": 0})["turn"]:
            last[r["img_id"]] = r
    final = _table([{**r, "set": "final_turn"} for r in last.values()], keys, "set", "img_id")
    return {"all_turns": per_turn.pop("all", {}), "final_turn": final.get("all", {}), "per_turn": per_turn}


def _write_rows(out: Path, records: list[dict]) -> None:
    atomic_write_text(out / "rows.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in records))
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
    atomic_write_bytes(out / "rows.csv", buf.getvalue().encode())


# ----------------------------------------------------------------------------
# The runner


def run_bench(benchmark: str, options: BenchOptions, progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Edit every planned row (resuming saved outputs), score them all, write the run folder."""
    if benchmark not in SCHEMAS:
        raise InstructSDError(f"unknown benchmark '{benchmark}'; use {' or '.join(SCHEMAS)}")
    rows, split = read_split(benchmark, options.dataset, options.split)
    waves = plan(benchmark, rows, options)
    jobs = [job for wave in waves for job in wave]
    if not jobs:
        raise InstructSDError(f"'{options.dataset}' split '{split}' has no rows")
    caption_column = _caption_column(rows, options.caption_column) if benchmark == MAGICBRUSH else None
    model_sha = model_hashes(options.model)
    record = _run_record(benchmark, options, split, model_sha)
    open_out(options.out, record, options.overwrite)

    device = options.device or default_device()
    column = "source_img" if benchmark == MAGICBRUSH else "image"
    edited = edit_all(waves, rows, column, options, lambda: load_pipeline(options.model, device=device, dtype=options.dtype),
                      progress)

    scorer = BenchScorer.load(benchmark, options.clip or DEFAULT_CLIP[benchmark], options.dino or DEFAULT_DINO[benchmark],
                              device=device, captions=benchmark == EMU_EDIT or caption_column is not None)
    records = score_all(benchmark, jobs, rows, scorer, options.out, caption_column)
    keys = scorer.names
    metrics = {
        "benchmark": benchmark, "model": options.model, "dataset": str(options.dataset), "split": split,
        "rows": len(records), "turns": options.turns if benchmark == MAGICBRUSH else None,
        "caption_column": caption_column, "seed": options.seed, "resolution": options.settings.max_side,
        "settings": dataclasses.asdict(options.settings), "dtype": options.dtype, "device": device,
        "metrics": keys, "published_metrics": list(METRICS[benchmark]), "skipped": scorer.skipped, "notes": scorer.notes,
        **summarise(benchmark, records, keys),
        "fingerprints": scorer.fingerprints(),
        "provenance": {"packages": package_versions(), "machine": machine(),
                       "model": {"source": options.model, "sha256": model_sha}},
    }
    if benchmark == MAGICBRUSH:
        metrics["sessions"] = len({r["img_id"] for r in records})
    _write_rows(options.out, records)
    atomic_write_text(options.out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return BenchResult(options.out, metrics, records, scorer.notes, edited)


def format_summary(metrics: dict) -> str:
    """The headline table: one line per setting, mean [95% interval] per metric."""
    keys = metrics["metrics"]
    if metrics["benchmark"] == MAGICBRUSH:
        lines = [("final turn", metrics["final_turn"]), ("all turns", metrics["all_turns"]),
                 *((f"turn {t}", s) for t, s in sorted(metrics["per_turn"].items(), key=lambda kv: int(kv[0])))]
    else:
        table = metrics["per_task"]
        lines = [("all", table["all"]), *((t, s) for t, s in table.items() if t != "all")]
    width = max(len(name) for name, _ in lines)
    head = f"{'':<{width}}  {'n':>4}  " + "  ".join(f"{k:>22}" for k in keys)
    body = [f"{name:<{width}}  {s['n']:>4}  " + "  ".join(
        f"{s[k]['mean']:>8.4f} [{s[k]['lo']:.4f}, {s[k]['hi']:.4f}]" for k in keys) for name, s in lines]
    return "\n".join([head, *body])
