"""Evaluation rows: which rows of a split are scored, and what each one is edited and scored with.

The one row preparer (issue 13): `instructsd eval` and `compare`, in-training validation and the
tiny base's card all score :func:`prepare_rows`' examples, so their numbers are comparable.
Before, four copies had drifted apart (held-out paraphrases drawn from different seeds, targets
resized with different filters). The rules, in one place:

- selection   up to ``per_task`` rows of each task, spread evenly over the split (:func:`select_per_task`)
- source      the input fitted as :func:`instructsd.edit.editor.edit_images` fits it (``fit_size``,
              sides rounded down to multiples of 8, at most ``max_side``), so the edit comes back at
              the source's size
- target      resized to the source with ``TARGET_RESAMPLE`` (Lanczos); a no-op when sizes agree
- instruction the row's own; a row built with deferred instructions stores "" and gets its task's
              canonical one, as training does (:func:`instruction_for`)
- seed        row ``i`` is edited with ``seed + i`` by every method and instruction set
- paraphrases seen / held-out wordings drawn with ``default_rng([seed, i])``: the same draw for every
              model and every caller (:func:`paraphrases`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from PIL import Image

from instructsd.data.images import DECODE_ERRORS, decode_reason, refuse_bombs
from instructsd.data.load import Columns
from instructsd.data.photo_ops import get_op, parse_edit_params
from instructsd.data.tasks import canonical_row_instruction, row_instruction
from instructsd.edit.editor import fit_size
from instructsd.errors import InstructSDError

# The task of rows in a dataset without a task column (the post's, for one): "all" is taken by
# the pooled row of every summary table.
NO_TASK = "edit"

# Lanczos: the filter fit_size shrinks sources with, so a target that needs resizing is treated as
# its source was. (In-training validation used PIL's default bicubic before issue 13.)
TARGET_RESAMPLE = Image.Resampling.LANCZOS

DATASET_SET = "dataset"  # the instruction stored in each row
INSTRUCTION_SETS = (DATASET_SET, "canonical", "seen", "held_out")

# Captions for the direction and CLIP-T metrics when a dataset has no caption columns: the
# same before/after pair for every example of a task, describing what the edit should change.
# Restoration tasks are (before, after) adjectives of "a ... photo"; a compound task such as
# "deblur+denoise" joins its parts' adjectives ("a blurry, out-of-focus and noisy, grainy photo").
# Every task of data.tasks.TASKS and every degradation's task has a pair (a test loops over
# them), so CLIP metrics run on every built-in task (issue 12: whitebalance had none).
TASK_ADJECTIVES: dict[str, tuple[str, str]] = {
    "denoise": ("noisy, grainy", "clean, noise-free"),
    "lowlight": ("dark, underexposed", "bright, well-lit"),
    "deblur": ("blurry, out-of-focus", "sharp, in-focus"),
    "derain": ("rain-streaked", "rain-free"),
    "dehaze": ("hazy, washed-out", "clear, haze-free"),
    "jpeg": ("blocky, JPEG-compressed", "artifact-free"),
    "whitebalance": ("colour-cast, tinted", "neutral, white-balanced"),
}
# Photo operations (issue 15): the output caption follows the edit's direction, read from the row's
# edit_params: (caption after the positive edit, after the negative one); one-way ops have one.
PHOTO_CAPTIONS: dict[str, tuple[str, str]] = {
    "exposure": ("a bright, overexposed photo", "a dark, underexposed photo"),
    "contrast": ("a high-contrast photo", "a flat, low-contrast photo"),
    "saturation": ("a vivid, saturated photo", "a muted, desaturated photo"),
    "vibrance": ("a vibrant photo", "a muted photo"),
    "temperature": ("a warm, amber-toned photo", "a cool, blue-toned photo"),
    "tint": ("a magenta-tinted photo", "a green-tinted photo"),
    "highlights": ("a photo with bright highlights", "a photo with subdued highlights"),
    "shadows": ("a photo with lifted shadows", "a photo with deep shadows"),
    "black_and_white": ("a black and white photo",) * 2,
    "sepia": ("a sepia-toned vintage photo",) * 2,
    "vignette": ("a photo with dark vignetted corners",) * 2,
    "grain": ("a grainy film photo",) * 2,
    "sharpen": ("a crisp, sharpened photo",) * 2,
    "hue": ("a photo with shifted hues",) * 2,
    "gamma": ("a photo with bright midtones", "a photo with dark midtones"),
    "flip": ("a mirrored photo",) * 2,
}
TASK_CAPTIONS: dict[str, tuple[str, str]] = {
    **{task: (f"a {before} photo", f"a {after} photo") for task, (before, after) in TASK_ADJECTIVES.items()},
    "cartoonize": ("a photo", "a cartoon with bold outlines and flat colours"),
    **{op: ("a photo", after) for op, (after, _) in PHOTO_CAPTIONS.items()},
    "photo_compound": ("a photo", "a retouched photo"),
}


@dataclass
class Example:
    """One scored row: what is edited (``source``), what it is scored against (``target``), the
    captions CLIP text metrics need, and where it came from."""

    source: Image.Image
    target: Image.Image
    input_caption: str | None = None
    output_caption: str | None = None
    index: int = 0  # the row's index in its split
    task: str = NO_TASK
    instruction: str = ""
    seed: int = 0
    photo: str | None = None  # the photo the row was cropped from: what the bootstrap resamples
    edit_params: str = ""  # a photo operation's parameters (JSON), "" for other tasks


def instruction_for(prompt: str | None, task: str, edit_params: str | None = None) -> str:
    """The row's instruction; rows built with deferred instructions store "" and get the task's
    canonical one, as training does."""
    return prompt if prompt else canonical_row_instruction(task, edit_params)


def captions_for(task: str, row: Mapping | None = None) -> tuple[str | None, str | None]:
    """(input caption, output caption): the dataset's own columns if it has them, else the task's pair
    (for a photo operation, the pair of the row's direction, read from its ``edit_params``)."""
    row = row or {}
    if row.get("input_caption") and row.get("output_caption"):
        return str(row["input_caption"]), str(row["output_caption"])
    if task in PHOTO_CAPTIONS and row.get("edit_params"):
        edit = parse_edit_params(row["edit_params"])[0]
        op = get_op(edit["op"])
        negative = bool(op.signed) and op.level_of(edit)[1]
        return "a photo", PHOTO_CAPTIONS[task][int(negative)]
    if task in TASK_CAPTIONS:
        return TASK_CAPTIONS[task]
    parts = task.split("+")
    if len(parts) > 1 and all(p in TASK_ADJECTIVES for p in parts):
        return (f"a {' and '.join(TASK_ADJECTIVES[p][0] for p in parts)} photo",
                f"a {' and '.join(TASK_ADJECTIVES[p][1] for p in parts)} photo")
    return None, None


def select_per_task(rows: Dataset, per_task: int | None, task_column: str = "task",
                    group_column: str | None = None) -> list[int]:
    """Up to ``per_task`` rows of each task, spread over the split (all rows when None).

    With ``group_column`` (the photo), a task's rows are taken round-robin over its photos, so every
    photo contributes as evenly as the count allows. Without it, rows are taken at even steps.
    Spreading matters: rows stored photo by photo would give N rows of one photo, and rows that
    cycle through the photos alias with an even step (48 of 80 rows cycling through 5 photos hit
    only 3 of them: the quickstart's first sepia report rested on 3 photos, not its 4 groups).
    """
    tasks = rows[task_column] if task_column in rows.column_names else [NO_TASK] * len(rows)
    groups = rows[group_column] if group_column and group_column in rows.column_names else None
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    picked = []
    for indices in by_task.values():
        if per_task is None or per_task >= len(indices):
            picked.extend(indices)
        elif groups is not None:
            by_group: dict[str, list[int]] = {}
            for i in indices:
                by_group.setdefault(str(groups[i]), []).append(i)
            queues = [spread(members, len(members)) for members in by_group.values()]
            order = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
            picked.extend(order[:per_task])
        else:
            picked.extend(spread(indices, per_task))
    return sorted(picked)


def spread(indices: list[int], n: int) -> list[int]:
    """``n`` of ``indices`` at even steps, in an order that stays spread when cut short (0, 1/2, 1/4, 3/4, ...)."""
    if n >= len(indices):
        n = len(indices)
    step = len(indices) / n
    even = [indices[int(k * step)] for k in range(n)]
    # bit-reversal order: any prefix of it is itself spread over the photo's crops
    bits = max(1, (n - 1).bit_length())
    ranks = sorted(range(n), key=lambda k: int(f"{k:0{bits}b}"[::-1], 2))
    return [even[k] for k in ranks]


def prepare_rows(rows: Dataset, *, per_task: int | None = None, seed: int = 0, columns: Columns = Columns(),
                 max_side: int | None = None, skipped: list[dict] | None = None) -> list[Example]:
    """The examples every scorer edits and scores, by the rules in this module's docstring.

    ``columns`` names the dataset's columns (TrainConfig's ``*_column`` keys); ``max_side`` is the
    edit settings' own, so sources are the size the edit comes back at. A row whose images fail to
    decode (corrupt, empty, a decompression bomb) is left out; ``skipped`` gets its
    ``{"index", "reason"}`` (issue 17: one such row crashed the whole evaluation).
    """
    examples = []
    for i in select_per_task(rows, per_task, columns.task_column, columns.group_column):
        try:
            with refuse_bombs():  # datasets decodes the row's images here
                raw = rows[i]
            source, target = raw[columns.input_column], raw[columns.edited_column]
            if source is None or target is None:
                raise ValueError("empty image cell")
            source, target = source.convert("RGB"), target.convert("RGB")
        except DECODE_ERRORS as err:
            if skipped is not None:
                skipped.append({"index": i, "reason": decode_reason(err)})
            continue
        task = str(raw.get(columns.task_column) or NO_TASK)
        source = fit_size(source, max_side=max_side)
        if target.size != source.size:
            target = target.resize(source.size, TARGET_RESAMPLE)
        photo = raw.get(columns.group_column)
        params = str(raw.get("edit_params") or "")
        examples.append(Example(source, target, *captions_for(task, raw), index=i, task=task,
                                instruction=instruction_for(raw[columns.prompt_column], task, params), seed=seed + i,
                                photo=None if photo is None else str(photo), edit_params=params))
    return examples


SKIPPED_ROWS = "skipped_rows.jsonl"  # beside metrics.json: the rows left out and why


def check_rows(examples: Sequence[Example], skipped: Sequence[dict], dataset: object, split: str) -> None:
    """Refuse to score nothing: no rows at all, or every row undecodable (named, with the first reason)."""
    if examples:
        return
    if skipped:
        first = skipped[0]
        raise InstructSDError(f"all {len(skipped)} rows of dataset '{dataset}' split '{split}' failed to decode "
                              f"(row {first['index']}: {first['reason']}); rebuild the dataset")
    raise InstructSDError(f"dataset '{dataset}' split '{split}' has no rows to compare on")


def skipped_note(skipped: Sequence[dict]) -> str:
    """One line for the report and the terminal: how many rows were left out, and where they are listed."""
    shown = ", ".join(str(r["index"]) for r in skipped[:5]) + (", …" if len(skipped) > 5 else "")
    return f"{len(skipped)} row(s) skipped because their images failed to decode (rows {shown}; see {SKIPPED_ROWS})"


def paraphrases(examples: Sequence[Example], which: str, seed: int = 0) -> list[str]:
    """Each example's instruction under one instruction set of ``INSTRUCTION_SETS``.

    "seen" and "held_out" draw a paraphrase from the task's training or held-out bank with
    ``default_rng([seed, row index])``: the one paraphrase rule, so the card's held-out numbers
    and ``compare --instructions held_out`` word the same row the same way.
    """
    if which == DATASET_SET:
        return [e.instruction for e in examples]
    if which == "canonical":
        return [canonical_row_instruction(e.task, e.edit_params) for e in examples]
    if which in ("seen", "held_out"):
        return [row_instruction(e.task, e.edit_params, np.random.default_rng([seed, e.index]), held_out=which == "held_out")
                for e in examples]
    raise InstructSDError(f"unknown instruction set '{which}'; use one of {', '.join(INSTRUCTION_SETS)}")
