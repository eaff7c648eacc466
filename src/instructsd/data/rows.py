"""Making one row of a mixture: read the source image, crop, degrade or teach, pick the instruction.

Every row draws only from generators seeded by ``(seed, component i, source image k, crop c)``,
so it does not depend on chunking, workers or shards. Two seed schemes (the mixture's
``seed_scheme``):

``mixture`` (default)
    item generator ``default_rng([seed, i, k, c])`` (degradation or teacher), crop box from
    ``default_rng([seed, i, k, c, 1])``, sampled instruction from ``default_rng([seed, i, k, c, 3])``;
    ``source`` and ``group`` columns are prefixed by the component name.

``legacy``
    ``build_dataset``'s scheme from before the builders were merged (issue 13), kept so its
    datasets -- the shipped tiny base's data and check subset, whose card
    ``tests/test_pretrain.py`` rebuilds to 1e-6 dB -- come out with the same pixels, prompts and
    order: item generator ``default_rng([seed, k, c, t])`` with ``t`` the task's index in
    :data:`~instructsd.data.tasks.TASKS`, the instruction drawn *first* from it (an index into
    ``Task.instructions``), crop boxes drawn one after another from ``default_rng([seed, k, 0, 0, 1])``
    (crop ``c`` is the ``c``-th draw), and ``source`` / ``group`` are the photo's own name.
    numpy's SeedSequence ignores trailing zeros, hence the fifth, non-zero word.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from instructsd.data.degradations import degrade
from instructsd.data.mixture import Component, Mixture
from instructsd.data.photo_ops import edit_params_json, is_grayscale, sample_edit
from instructsd.data.photo_pairs import inverse_pair
from instructsd.data.plan import Plan, open_source
from instructsd.data.tasks import canonical_row_instruction, get_task, row_instruction, task_index
from instructsd.data.teachers import load_teacher

CROP_SCALE = (0.5, 1.0)  # random crops: side as a fraction of the short side
_CROP_STREAM, _PROMPT_STREAM = 1, 3  # extra seed words: independent of the per-item stream
_WORKER_STATE: dict[str, tuple[list, list]] = {}


def _worker_state(key: str, mixture: Mixture) -> tuple[list, list]:
    """Sources and teachers, opened once per process (``key``: the plan's fingerprint)."""
    if key not in _WORKER_STATE:
        sources = [open_source(c, mixture.max_pixels) for c in mixture.components]
        teachers = [load_teacher(c.teacher) if c.kind == "teacher" else None
                    for c in mixture.components]
        _WORKER_STATE.clear()  # one build at a time per process
        _WORKER_STATE[key] = (sources, teachers)
    return _WORKER_STATE[key]


def crop_box(w: int, h: int, c: int, rng: np.random.Generator, *, draws: int = 1) -> tuple[float, float, float, float]:
    """Crop ``c`` of an image: 0 is the centre square of the full short side, others a random
    square of 0.5-1.0 x the short side. The box is the ``draws``-th drawn from ``rng`` (legacy: ``c``)."""
    short = min(w, h)
    x, y, side = (w - short) / 2, (h - short) / 2, float(short)
    for _ in range(draws if c else 0):
        side = short * rng.uniform(*CROP_SCALE)
        x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
    # Cropping through resize's float `box` avoids rounding the crop to whole pixels.
    return (x, y, x + side, y + side)


def _resize(im: Image.Image, box, size: int) -> np.ndarray:
    """Lanczos widens its kernel when shrinking, so large photos are properly antialiased."""
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS, box=box))


def _png(array: np.ndarray) -> dict:
    """Lossless PNG; compression level 1 is ~4x faster to write than the default 6 and
    only slightly larger on photos -- encoding dominates a build's time otherwise."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def make_rows(plan: Plan, indices: range) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Rows ``(split, row)`` and skip records for the global item ``indices``, in order.

    Images are read one item at a time and dropped after use, so memory stays at a few
    full-resolution photos whatever the build's size. A streaming source has no random
    access: its images for the chunk are read in one pass, so such a chunk holds up to
    ``chunk_size`` decoded images.
    """
    mix = plan.mixture
    sources, teachers = _worker_state(plan.fingerprint(), mix)
    located = [plan.item(i) for i in indices]
    needed: dict[int, set[int]] = {}
    for ci, k, _ in located:
        needed.setdefault(ci, set()).add(k)
    streamed = {(ci, k): img for ci, ks in needed.items() if getattr(sources[ci], "streaming", False)
                for k, img in sources[ci].load_many(sorted(ks))}
    legacy = mix.seed_scheme == "legacy"
    rows, skipped = [], []
    for index, (ci, k, c) in zip(indices, located):
        comp = mix.components[ci]
        name = plan.names[ci][k]
        record = {"item": index, "component": comp.name, "source": name, "crop": c}
        img = streamed[(ci, k)] if (ci, k) in streamed else next(iter(sources[ci].load_many([k])))[1]
        if isinstance(img, Exception):
            skipped.append({**record, "reason": str(img).splitlines()[0] if str(img) else repr(img)})
            continue
        try:
            row = _make_row(mix, ci, comp, teachers[ci], img, k, c)
        except _Skip as why:
            skipped.append({**record, "reason": str(why)})
            continue
        # build_dataset's rows (legacy, or its permutation split: one photo source for every task) carry the
        # photo's own name, so one photo is one cluster across tasks; a mixture's components may share names.
        prefix = "" if legacy or mix.split == "permutation" else f"{comp.name}/"
        row["source"] = prefix + name
        row["group"] = prefix + plan.groups[ci][k]
        row["part"] = plan.parts[ci][k]
        row["edit_params"] = row.pop("edit_params")  # the schema's order: COLUMNS
        rows.append((plan.split(ci, k), row))
    return rows, skipped


class _Skip(Exception):
    """This item makes no row; the reason goes to skipped.jsonl."""


def _make_row(mix: Mixture, ci: int, comp: Component, teacher, img, k: int, c: int) -> dict:
    first = img[0] if isinstance(img, tuple) else img
    w, h = first.size
    if min(w, h) < mix.min_side:
        raise _Skip(f"image is {w}x{h}, smaller than min_size {mix.min_side} on its short side")
    if mix.seed_scheme == "legacy":
        rng = np.random.default_rng([mix.seed, k, c, task_index(comp.task)])
        instructions = get_task(comp.task).instructions
        drawn = instructions[int(rng.integers(len(instructions)))]  # drawn first, before the degradation
        box = crop_box(w, h, c, np.random.default_rng([mix.seed, k, 0, 0, _CROP_STREAM]), draws=c)
    else:
        rng = np.random.default_rng([mix.seed, ci, k, c])
        box = crop_box(w, h, c, np.random.default_rng([mix.seed, ci, k, c, _CROP_STREAM]))
    params = ""  # a photo operation's edit_params
    if comp.kind == "t2i":  # the image is the target; the black input is never seen (data/t2i.py)
        image, caption = img
        if not caption:
            raise _Skip("empty caption")
        target = _resize(image, box, mix.size)
        cols = mix.columns
        return {cols["input_image"]: _png(np.zeros_like(target)), cols["edit_prompt"]: caption,
                cols["edited_image"]: _png(target), "task": comp.task, "edit_params": ""}
    if comp.kind == "paired":
        inp_im, target_im = img
        if inp_im.size != target_im.size:
            raise _Skip(f"input is {inp_im.size[0]}x{inp_im.size[1]} but target is "
                        f"{target_im.size[0]}x{target_im.size[1]}")
        inp, target = _resize(inp_im, box, mix.size), _resize(target_im, box, mix.size)
    else:
        clean = _resize(img, box, mix.size)
        if comp.kind == "synthetic":
            inp, _, _ = degrade(clean, comp.degradations, rng)
            target = clean
        elif comp.kind == "photo":
            inp, target, params = _photo_pair(comp, clean, rng)
        else:
            inp, target = clean, teacher(clean, rng)
    prompt_rng = np.random.default_rng([mix.seed, ci, k, c, _PROMPT_STREAM])
    if mix.instructions == "fixed":
        prompt = canonical_row_instruction(comp.task, params)
    elif mix.instructions == "deferred":
        prompt = ""  # the trainer samples a paraphrase of `task` at use time
    elif mix.seed_scheme == "legacy":
        prompt = drawn
    else:  # its own stream, so the instruction does not shift the degradation's draws
        prompt = row_instruction(comp.task, params, prompt_rng)
    cols = mix.columns
    return {cols["input_image"]: _png(inp), cols["edit_prompt"]: prompt,
            cols["edited_image"]: _png(target), "task": comp.task, "edit_params": params}


def _photo_pair(comp: Component, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(input, target, edit_params) of a photo operation: the op on the photo or, for the component's
    ``inverse`` share, the inverse pair (edited photo, the opposite edit, the photo)."""
    task = get_task(comp.task)
    if task.needs_colour and is_grayscale(clean):
        raise _Skip(f"grayscale photo: {comp.task} changes only colour, the pair would show no edit")
    if comp.inverse and rng.uniform() < comp.inverse:
        params = sample_edit(task.photo_op, rng)
        pair = inverse_pair(task.photo_op, clean, params)
        if pair is not None:  # else the clipped original cannot be restored: a plain pair instead
            edited, inverse = pair
            return edited, clean.copy(), edit_params_json(inverse)
    return task.make(clean, rng)
