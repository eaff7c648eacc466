"""Mixtures: one YAML file describes a multi-task instruction dataset.

The post's low-level dataset is a *mixture* -- REDS deblur pairs, Rain13k derain pairs,
SIDD denoise pairs, LOL low-light pairs -- in one set for one model. A mixture file lists
such components and how many pairs each contributes::

    seed: 0
    size: 256                  # side of the square pairs
    val_fraction: 0.1          # share of each component's source images held out
    min_size: 256              # smaller source images are skipped (default: size)
    chunk_size: 64             # rows per written chunk (resume granularity)
    instructions: sampled      # fixed | sampled | deferred
    columns: {input_image: original_image, edit_prompt: edit_prompt, edited_image: cartoonized_image}
    total: 2000                # with `weight`s below; or give each component a `count`
    components:
      - task: cartoonize
        source: {folder: photos/}
        teacher: cartoonizer            # or module:function, {diffusers: DIR}, {onnx: FILE}
        weight: 1
      - paired: {layout: reds, root: /data/REDS}      # task from the layout: deblur
        count: 1200                                   # training pairs; REDS val -> test
      - source: {dataset: frgfm/imagenette, split: train, streaming: true, limit: 500}
        degradations: [blur, {name: gaussian_noise, sigma: [5, 25]}]   # task deblur+denoise
        count: 500

Component kinds: ``degradations`` (synthetic: clean source photo -> degraded input, clean
target), ``teacher`` (photo -> teacher's output), ``paired`` (input and target files), or a
built-in ``task`` of :data:`instructsd.data.tasks.TASKS` applied to ``source`` photos.
Sources: ``{folder: DIR}``, ``{dataset: ID_OR_PATH, split, column, streaming, limit}``,
``{samples: true}``.

Splits (issue 12): a paired dataset's official parts are kept -- its test (and validation)
pairs become the ``test`` (``validation``) split, one centre crop each (``test_count`` caps
them), never train; ``count``/``weight`` size the training part. ``validation`` is carved
from training pairs only, by a seeded hash of the pair's *group* (sequence, scene or photo),
unless the dataset has an official validation part. Every row records its ``group`` and
official ``part``.

Instruction policy: ``fixed`` writes the canonical instruction, ``sampled`` one paraphrase
per row drawn at build time from the train banks, ``deferred`` writes ``""`` and leaves
the choice to the trainer, which samples a paraphrase for the row's ``task`` each time it
uses the row (the post's "sample paraphrases on the fly" open question).

Reproducibility: a component uses its source images in a seeded order (a seeded subset
when ``count`` is smaller than the source); item ``j`` takes the ``j mod n``-th of those
``n`` images and crop ``c = j div n`` (an image is reused with new random crops once all are
used: crop 0 is the centre square, later ones random squares of 0.5-1.0 x the short side),
and draws everything from ``default_rng([seed, i, k, c])`` for component ``i`` and source
image ``k`` -- independent of chunking, workers and shards.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from instructsd.data.degradations import DegradationSpec, compound_task, degrade, parse_specs
from instructsd.data.instructions import canonical_instruction, sample_instruction, split_task
from instructsd.errors import InstructSDError

POLICIES = ("fixed", "sampled", "deferred")
DEFAULT_COLUMNS = {"input_image": "input_image", "edit_prompt": "edit_prompt",
                   "edited_image": "edited_image"}
CROP_SCALE = (0.5, 1.0)  # random crops: side as a fraction of the short side (as build.py)
_TOP_KEYS = {"seed", "size", "val_fraction", "min_size", "chunk_size", "instructions",
             "columns", "total", "components"}
_COMPONENT_KEYS = {"name", "task", "source", "paired", "teacher", "degradations", "count",
                   "weight", "test_count"}
_PAIRED_KEYS = {"layout", "root", "input", "target", "pair", "unmatched"}
ROW_KEYS = ("task", "source", "group", "part")
"""Columns every mixture row has besides the three named by ``columns``."""
_CROP_STREAM, _PROMPT_STREAM = 1, 3  # extra seed words: independent of the per-item stream


@dataclass(frozen=True)
class Component:
    """One part of a mixture: where the images come from and how a pair is made."""

    name: str
    """Prefix of the ``source`` column; unique within the mixture."""
    task: str
    """Task name written to the ``task`` column (compound for composed degradations)."""
    kind: str
    """``synthetic`` | ``teacher`` | ``paired`` | ``builtin``."""
    source: Mapping | None = None
    paired: Mapping | None = None
    teacher: object = None
    degradations: tuple[DegradationSpec, ...] = ()
    count: int | None = None
    """Training rows (official test/validation pairs come on top)."""
    weight: float | None = None
    test_count: int | None = None
    """At most this many pairs from the official test and validation parts (default: all)."""


@dataclass(frozen=True)
class Mixture:
    """A parsed, validated mixture file (see the module docstring)."""

    components: tuple[Component, ...]
    seed: int = 0
    size: int = 256
    val_fraction: float = 0.1
    min_size: int | None = None
    chunk_size: int = 64
    instructions: str = "sampled"
    columns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    total: int | None = None
    raw: Mapping = field(default_factory=dict, compare=False)
    """The mapping it was parsed from (written next to the dataset)."""

    @property
    def min_side(self) -> int:
        return self.size if self.min_size is None else self.min_size


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise InstructSDError(f"{where}: {msg}")


def parse_mixture(data: Mapping, where: str = "mixture") -> Mixture:
    """Validate a mixture mapping; every problem is an error naming the key."""
    _need(isinstance(data, Mapping), where, "must be a YAML mapping")
    unknown = set(data) - _TOP_KEYS
    _need(not unknown, where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    policy = data.get("instructions", "sampled")
    _need(policy in POLICIES, where, f"instructions must be one of {', '.join(POLICIES)}, got {policy!r}")
    columns = {**DEFAULT_COLUMNS, **(data.get("columns") or {})}
    _need(set(columns) == set(DEFAULT_COLUMNS), where,
          f"columns maps {', '.join(DEFAULT_COLUMNS)} to new names; got keys {sorted(columns)}")
    _need(len(set(columns.values()) | set(ROW_KEYS)) == 3 + len(ROW_KEYS), where,
          f"column names must be distinct and not {'/'.join(ROW_KEYS)}, got {columns}")
    size = data.get("size", 256)
    _need(isinstance(size, int) and size >= 8, where, f"size must be an integer >= 8, got {size!r}")
    vf = data.get("val_fraction", 0.1)
    _need(isinstance(vf, (int, float)) and 0 <= vf < 1, where, f"val_fraction must be in [0, 1), got {vf!r}")
    chunk = data.get("chunk_size", 64)
    _need(isinstance(chunk, int) and chunk >= 1, where, f"chunk_size must be a positive integer, got {chunk!r}")
    comps = data.get("components")
    _need(isinstance(comps, list) and comps, where, "components must be a non-empty list")
    parsed = tuple(_parse_component(c, f"{where} components[{i}]") for i, c in enumerate(comps))
    names = [c.name for c in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _need(not dupes, where, f"component names must be unique, repeated: {dupes}; set 'name'")
    total = data.get("total")
    weighted = [c for c in parsed if c.weight is not None]
    if weighted:
        _need(isinstance(total, int) and total > 0, where, "components with 'weight' need a top-level 'total'")
    return Mixture(components=parsed, seed=int(data.get("seed", 0)), size=size, val_fraction=float(vf),
                   min_size=data.get("min_size"), chunk_size=chunk, instructions=policy,
                   columns=columns, total=total, raw=dict(data))


def _parse_component(c: Mapping, where: str) -> Component:
    from instructsd.data.layouts import LAYOUT_TASKS, LAYOUTS, PairRule, layout_options
    from instructsd.data.tasks import TASKS
    from instructsd.data.teachers import check_teacher

    _need(isinstance(c, Mapping), where, "must be a mapping")
    unknown = set(c) - _COMPONENT_KEYS
    _need(not unknown, where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_COMPONENT_KEYS)}")
    count, weight = c.get("count"), c.get("weight")
    _need(count is None or weight is None, where, "give 'count' or 'weight', not both")
    _need(count is None or (isinstance(count, int) and count > 0), where, f"count must be a positive integer, got {count!r}")
    _need(weight is None or (isinstance(weight, (int, float)) and weight > 0), where, f"weight must be > 0, got {weight!r}")
    test_count = c.get("test_count")
    _need(test_count is None or (isinstance(test_count, int) and test_count >= 0), where,
          f"test_count must be a non-negative integer, got {test_count!r}")
    _need(test_count is None or "paired" in c, where, "test_count is for paired components (official test parts)")
    task = c.get("task")
    if "degradations" in c:
        _need("source" in c and "paired" not in c and "teacher" not in c, where,
              "'degradations' needs a 'source' (and no 'paired' or 'teacher')")
        specs = tuple(parse_specs(c["degradations"]))
        derived = compound_task(specs)
        _need(task in (None, derived), where, f"task {task!r} disagrees with its degradations ({derived}); drop 'task'")
        kind, task = "synthetic", derived
    elif "paired" in c:
        _need(isinstance(c["paired"], Mapping) and "layout" in c["paired"], where,
              "paired needs a mapping with 'layout' (and 'root', or 'input' and 'target')")
        layout = c["paired"]["layout"]
        _need(layout in LAYOUTS or layout == "folders", where,
              f"unknown paired layout {layout!r}; choose from: {', '.join([*LAYOUTS, 'folders'])}")
        pair, options = _paired_keys(c["paired"])
        try:
            if layout != "folders":
                layout_options(layout, options)
            else:
                _need(not options, where, f"paired layout 'folders' has no key(s) {sorted(options)}")
            if pair is not None:
                _need(isinstance(pair, Mapping) and set(pair) == {"input", "target"}, where,
                      "pair must be {input: REGEX, target: TEMPLATE}, e.g. {input: 'low(\\d+)', target: 'normal{1}'}")
                PairRule(**pair)
        except InstructSDError as err:
            raise InstructSDError(f"{where}: {err}") from None
        task = task or LAYOUT_TASKS.get(layout)
        _need(task is not None, where, "paired layout 'folders' needs a 'task'")
        kind, specs = "paired", ()
    elif "teacher" in c:
        _need("source" in c and task, where, "a teacher component needs 'source' and 'task'")
        check_teacher(c["teacher"])
        kind, specs = "teacher", ()
    else:
        _need("source" in c and task in TASKS, where,
              f"give 'degradations', 'paired', 'teacher', or a built-in task ({', '.join(TASKS)}) with a 'source'")
        kind, specs = "builtin", ()
    split_task(task)  # every task needs an instruction bank
    if "source" in c:
        src = c["source"]
        _need(isinstance(src, Mapping) and len({"folder", "dataset", "samples"} & set(src)) == 1,
              where, "source must be one of {folder: DIR}, {dataset: ID_OR_PATH, ...}, {samples: true}")
    return Component(name=str(c.get("name", task)), task=task, kind=kind, source=c.get("source"),
                     paired=c.get("paired"), teacher=c.get("teacher"), degradations=specs,
                     count=count, weight=weight, test_count=test_count)


def _paired_keys(paired: Mapping) -> tuple[Mapping | None, dict]:
    """A ``paired`` mapping's pairing rule, and its layout options (every other key)."""
    return paired.get("pair"), {k: v for k, v in paired.items() if k not in _PAIRED_KEYS}


def load_mixture(path: str | Path) -> Mixture:
    """Read and validate a mixture YAML file."""
    path = Path(path)
    if not path.is_file():
        raise InstructSDError(f"mixture file '{path}' not found; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InstructSDError(f"mixture file '{path}' is not valid YAML ({err})") from err
    return parse_mixture(data, where=str(path))


# --- resolving sources: done once in the parent (errors before any work) and per worker ---


def open_source(component: Component):
    """The component's source object (folder listed, pairs matched, dataset opened)."""
    from instructsd.data.sources import FolderSource, HubSource, PairedSource, SampleSource

    if component.kind == "paired":
        _, options = _paired_keys(component.paired)
        known = {k: v for k, v in component.paired.items() if k in _PAIRED_KEYS}
        return PairedSource(**known, options=options)
    src = dict(component.source)
    if "folder" in src:
        return FolderSource(src["folder"])
    if "samples" in src:
        return SampleSource()
    return HubSource(**src)


@dataclass
class Plan:
    """What a build makes: per component its source names, items and their splits."""

    mixture: Mixture
    names: list[list[str]]
    counts: list[int]
    """Per component, its items: ``n_train`` training items, then one per ``held`` pair."""
    val: list[set[int]]
    """Per component, the source indices carved from training pairs for validation."""
    used: list[list[int]]
    """Per component, the training source indices, in order: item j takes used[j mod len]."""
    n_train: list[int] = field(default_factory=list)
    held: list[list[int]] = field(default_factory=list)
    """Per component, the source indices of its official test/validation pairs."""
    splits: list[list[str]] = field(default_factory=list)
    """Per component and source index, the official split (train for unsplit sources)."""
    groups: list[list[str]] = field(default_factory=list)
    parts: list[list[str]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    """Source files that make no item (unpaired files of ``unmatched: skip``)."""
    _fingerprint: str = ""

    @property
    def n_items(self) -> int:
        return sum(self.counts)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.mixture.chunk_size)

    def item(self, index: int) -> tuple[int, int, int]:
        """Global item index -> (component, source index k, crop index c)."""
        ci, j = self.locate(index)
        if j >= self.n_train[ci]:
            return ci, self.held[ci][j - self.n_train[ci]], 0  # evaluation pairs: the centre crop
        used = self.used[ci]
        return ci, used[j % len(used)], j // len(used)

    def split(self, ci: int, k: int) -> str:
        official = self.splits[ci][k]
        if official != "train":
            return official
        return "validation" if k in self.val[ci] else "train"

    def locate(self, index: int) -> tuple[int, int]:
        """Global item index -> (component, item within it)."""
        for ci, n in enumerate(self.counts):
            if index < n:
                return ci, index
            index -= n
        raise IndexError(index)

    def fingerprint(self) -> str:
        """Changes whenever the rows would: the mixture and every source name."""
        if self._fingerprint:
            return self._fingerprint
        blob = json.dumps([_jsonable(self.mixture.raw), self.names, self.counts, self.used, self.held,
                           self.splits, self.groups, self.parts, self.skipped], sort_keys=True)
        self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return self._fingerprint


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def make_plan(mixture: Mixture) -> Plan:
    """Resolve every source and count; raises before any image is processed."""
    plan = Plan(mixture, [], [], [], [])
    sources = [open_source(c) for c in mixture.components]
    weights = sum(c.weight for c in mixture.components if c.weight is not None)
    for comp, source in zip(mixture.components, sources):
        names = list(source.names)
        n = len(names)
        if n == 0:
            raise InstructSDError(f"component {comp.name!r}: its source has no images")
        # Paired datasets say which split each pair is in and which pairs go together
        # (a video's frames, a scene's shots); a photo is its own group.
        splits = list(getattr(source, "splits", ["train"] * n))
        groups = list(getattr(source, "groups", names))
        train = [k for k in range(n) if splits[k] == "train"]
        if comp.count is not None:
            count = comp.count
        elif comp.weight is not None:
            count = max(1, round(mixture.total * comp.weight / weights))
        else:
            count = len(train)  # one pass over the training pairs
        if count and not train:
            raise InstructSDError(f"component {comp.name!r}: its source has no training pairs (only "
                                  f"{', '.join(sorted(set(splits)))}); drop 'count'/'weight' to take those alone")
        # a seeded subset when count < n (not just the first files of a sorted layout)
        order = sorted(train, key=lambda k: _unit_hash(mixture.seed, "order", names[k]))
        used = order[:min(count, len(train))]
        held = sorted(k for k in range(n) if splits[k] != "train")
        if comp.test_count is not None:
            held = sorted(sorted(held, key=lambda k: _unit_hash(mixture.seed, "order", names[k]))[:comp.test_count])
        # Carve validation from training pairs only, unless the dataset has its own.
        fraction = 0.0 if "validation" in splits else mixture.val_fraction
        plan.names.append(names)
        plan.counts.append(count + len(held))
        plan.n_train.append(count)
        plan.used.append(used)
        plan.held.append(held)
        plan.val.append(_val_indices([groups[k] for k in used], used, fraction, mixture.seed))
        plan.splits.append(splits)
        plan.groups.append(groups)
        plan.parts.append(list(getattr(source, "parts", [""] * n)))
        plan.skipped += [{"component": comp.name, "source": key, "reason": f"unmatched: {why}"}
                         for key, why in getattr(source, "skipped", [])]
    return plan


def _unit_hash(seed: int, stream: str, name: str) -> float:
    """A number in [0, 1) fixed by (seed, stream, name): order-free, worker-free randomness."""
    digest = hashlib.sha256(f"{seed}:{stream}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _val_indices(names: list[str], indices: list[int], fraction: float, seed: int) -> set[int]:
    """Source images held out for validation: whole images, so no crop leaks into train.

    An image is held out when ``u(seed, name) < fraction`` for a seeded hash ``u`` of its
    *group* name (its sequence, scene or photo, so near-identical frames never straddle the
    split): components that share photos hold out the same ones, so a photo never sits in
    train for one task and validation for another. With two or more images, at least one
    goes to validation and at least one stays in train (the extremes of ``u``).
    """
    if len(set(names)) < 2 or fraction <= 0:
        return set()
    u = [_unit_hash(seed, "split", name) for name in names]  # equal names (a group): equal u
    val = {i for i, x in enumerate(u) if x < fraction}
    if not val:
        val = {i for i, x in enumerate(u) if x == min(u)}
    if len(val) == len(names):
        val = {i for i in val if u[i] != max(u)}
    return {indices[i] for i in val}


# --- making one row ------------------------------------------------------------------------


_WORKER_STATE: dict[str, tuple[list, list]] = {}


def _worker_state(key: str, mixture: Mixture) -> tuple[list, list]:
    """Sources and teachers, opened once per process (``key``: the plan's fingerprint)."""
    from instructsd.data.teachers import load_teacher

    if key not in _WORKER_STATE:
        sources = [open_source(c) for c in mixture.components]
        teachers = [load_teacher(c.teacher) if c.kind == "teacher" else None
                    for c in mixture.components]
        _WORKER_STATE.clear()  # one build at a time per process
        _WORKER_STATE[key] = (sources, teachers)
    return _WORKER_STATE[key]


def crop_box(w: int, h: int, c: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Crop ``c`` of an image: 0 is the centre square of the full short side, others random."""
    short = min(w, h)
    if c == 0:
        x, y, side = (w - short) / 2, (h - short) / 2, float(short)
    else:
        side = short * rng.uniform(*CROP_SCALE)
        x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
    return (x, y, x + side, y + side)


def _resize(im: Image.Image, box, size: int) -> np.ndarray:
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
        row["source"] = f"{comp.name}/{name}"
        row["group"] = f"{comp.name}/{plan.groups[ci][k]}"
        row["part"] = plan.parts[ci][k]
        rows.append((plan.split(ci, k), row))
    return rows, skipped


class _Skip(Exception):
    """This item makes no row; the reason goes to skipped.jsonl."""


def _make_row(mix: Mixture, ci: int, comp: Component, teacher, img, k: int, c: int) -> dict:
    rng = np.random.default_rng([mix.seed, ci, k, c])
    crop_rng = np.random.default_rng([mix.seed, ci, k, c, _CROP_STREAM])
    first = img[0] if isinstance(img, tuple) else img
    w, h = first.size
    if min(w, h) < mix.min_side:
        raise _Skip(f"image is {w}x{h}, smaller than min_size {mix.min_side} on its short side")
    box = crop_box(w, h, c, crop_rng)
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
        elif comp.kind == "teacher":
            inp, target = clean, teacher(clean, rng)
        else:
            from instructsd.data.tasks import get_task

            inp, target = get_task(comp.task).apply(clean, rng)
    if mix.instructions == "fixed":
        prompt = canonical_instruction(comp.task)
    elif mix.instructions == "sampled":
        # its own stream, so the instruction does not shift the degradation's draws
        prompt = sample_instruction(comp.task, np.random.default_rng([mix.seed, ci, k, c, _PROMPT_STREAM]))
    else:
        prompt = ""  # deferred: the trainer samples a paraphrase of `task` at use time
    cols = mix.columns
    return {cols["input_image"]: _png(inp), cols["edit_prompt"]: prompt,
            cols["edited_image"]: _png(target), "task": comp.task}
