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
    max_pixels: 50000000       # larger source images are skipped, before decoding
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
target), ``teacher`` (photo -> teacher's output), ``paired`` (input and target files), ``t2i``
(captioned images for text-to-image rows: :mod:`instructsd.data.t2i`), or a
built-in ``task`` of :data:`instructsd.data.tasks.TASKS` (its registered degradation, teacher
or photo operation) applied to ``source`` photos. A photo-operation component (``task: exposure``,
``task: photo_compound``, ...) records each row's parameters in ``edit_params``, skips grayscale
photos for operations that only change colour, and takes ``inverse: FRACTION``: that share of
its rows (for invertible operations) is the edited photo with the opposite instruction, the
original as target, kept only where the inverse restores the original (clipping loses some).
Sources: ``{folder: DIR}``, ``{dataset: ID_OR_PATH, split, column, streaming, limit}``,
``{samples: true}``.

``holdout: [GROUP, ...]`` puts exactly those groups (photos; a stereo pair or a scene is one group)
in validation instead of a ``val_fraction`` draw, so held-out photos can be named, the same ones for
a base model and every fine-tuning of it.

Splits (issue 12): a paired dataset's official parts are kept -- its test (and validation)
pairs become the ``test`` (``validation``) split, one centre crop each (``test_count`` caps
them), never train; ``count``/``weight`` size the training part. ``validation`` is carved
from training pairs only, by a seeded hash of the pair's *group* (sequence, scene or photo),
unless the dataset has an official validation part. Every row records its ``group`` and
official ``part``.

Instruction policy: ``fixed`` writes the canonical instruction, ``sampled`` one paraphrase
per row drawn at build time from the train banks, ``deferred`` writes ``""`` and leaves
the choice to the trainer, which samples a paraphrase for the row's ``task`` each time it
uses the row (the post's "sample paraphrases on the fly" open question). Photo operations state
the row's amount, so they take ``fixed`` (the canonical template with that amount) or ``sampled``.

Reproducibility (``seed_scheme: mixture``, the default): a component uses its source images
in a seeded order (a seeded subset when ``count`` is smaller than the source); item ``j``
takes the ``j mod n``-th of those ``n`` images and crop ``c = j div n`` (an image is reused
with new random crops once all are used: crop 0 is the centre square, later ones random
squares of 0.5-1.0 x the short side), and draws everything from
``default_rng([seed, i, k, c])`` for component ``i`` and source image ``k`` -- independent of
chunking, workers and shards. ``seed_scheme: legacy`` is ``build_dataset``'s older scheme,
kept so datasets it made (and the shipped tiny base, whose card a test rebuilds) come out
bit for bit the same; :mod:`instructsd.data.rows` describes it. ``split: permutation`` is
that builder's split rule (a seeded permutation of the photos, ``round(n * val_fraction)``
held out), which the quickstart reuses so the base's validation photos stay unseen.

Robustness: source images smaller than ``min_size`` on their short side, unreadable ones,
and ones whose header declares more than ``max_pixels`` pixels (checked before decoding,
default 50 MP) make no row; each goes to ``skipped.jsonl`` with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from instructsd.data.degradations import DegradationSpec, compound_task, parse_specs
from instructsd.data.images import DEFAULT_MAX_PIXELS
from instructsd.data.instructions import split_task
from instructsd.data.layouts import LAYOUT_TASKS, LAYOUTS, PairRule, layout_options
from instructsd.data.load import COLUMNS
from instructsd.data.t2i import T2I_TASK, check_t2i_source
from instructsd.data.tasks import TASKS
from instructsd.data.teachers import check_teacher
from instructsd.errors import InstructSDError

POLICIES = ("fixed", "sampled", "deferred")
SEED_SCHEMES = ("mixture", "legacy")
SPLIT_RULES = ("hash", "permutation")
DEFAULT_COLUMNS = dict(zip(("input_image", "edit_prompt", "edited_image"), COLUMNS[:3]))
_TOP_KEYS = {"seed", "size", "val_fraction", "min_size", "max_pixels", "chunk_size", "instructions",
             "columns", "total", "components", "seed_scheme", "split", "holdout"}
_COMPONENT_KEYS = {"name", "task", "source", "paired", "teacher", "degradations", "count",
                   "weight", "test_count", "inverse", "t2i"}
_PAIRED_KEYS = {"layout", "root", "input", "target", "pair", "unmatched"}
ROW_KEYS = COLUMNS[3:]
"""Columns every mixture row has besides the three named by ``columns``: task, source, group, part."""


@dataclass(frozen=True)
class Component:
    """One part of a mixture: where the images come from and how a pair is made."""

    name: str
    """Prefix of the ``source`` column; unique within the mixture."""
    task: str
    """Task name written to the ``task`` column (compound for composed degradations)."""
    kind: str
    """``synthetic`` | ``teacher`` | ``photo`` | ``paired`` | ``t2i`` (a built-in task is one of the first three)."""
    source: object = None
    """A source mapping (``{folder: DIR}`` ...) or, from Python, a source object (in-memory photos)."""
    paired: Mapping | None = None
    teacher: object = None
    degradations: tuple[DegradationSpec, ...] = ()
    count: int | None = None
    """Training rows (official test/validation pairs come on top)."""
    weight: float | None = None
    test_count: int | None = None
    """At most this many pairs from the official test and validation parts (default: all)."""
    inverse: float = 0.0
    """Photo operations: share of rows made as inverse pairs (edited photo, opposite instruction, original)."""


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
    seed_scheme: str = "mixture"
    """``mixture`` | ``legacy`` (build_dataset's: same rows as before issue 13; see data/rows.py)."""
    split: str = "hash"
    """``hash`` (by group, per component) | ``permutation`` (build_dataset's rule, by photo)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Source images whose header declares more pixels are skipped before decoding."""
    holdout: tuple[str, ...] = ()
    """Groups put in validation by name (instead of a ``val_fraction`` draw)."""
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
    scheme, split = data.get("seed_scheme", "mixture"), data.get("split", "hash")
    _need(scheme in SEED_SCHEMES, where, f"seed_scheme must be one of {', '.join(SEED_SCHEMES)}, got {scheme!r}")
    _need(split in SPLIT_RULES, where, f"split must be one of {', '.join(SPLIT_RULES)}, got {split!r}")
    if scheme == "legacy":  # build_dataset's scheme knows built-in tasks on one photo source, nothing else
        _need(all(set(c) <= {"task", "source", "count", "name"} and c.get("task") in TASKS
                  and TASKS[c["task"]].photo_op is None for c in comps), where,
              "seed_scheme legacy takes only the built-in tasks that predate photo operations ({task, source, count}); "
              "use the default seed_scheme")
    if policy == "deferred":
        photo = [c.name for c in parsed if c.kind == "photo"]
        _need(not photo, where, f"instructions: deferred cannot word photo operations (components {photo}): their "
              "instruction states each row's amount; use sampled or fixed")
    holdout = data.get("holdout") or []
    _need(isinstance(holdout, list) and all(isinstance(h, str) for h in holdout), where,
          f"holdout must be a list of group (photo) names, got {holdout!r}")
    max_pixels = data.get("max_pixels", DEFAULT_MAX_PIXELS)
    _need(isinstance(max_pixels, int) and max_pixels > 0, where, f"max_pixels must be a positive integer, got {max_pixels!r}")
    min_size = data.get("min_size")
    _need(min_size is None or (isinstance(min_size, int) and min_size >= 1), where,
          f"min_size must be a positive integer, got {min_size!r}")
    return Mixture(components=parsed, seed=int(data.get("seed", 0)), size=size, val_fraction=float(vf),
                   min_size=min_size, chunk_size=chunk, instructions=policy, columns=columns, total=total,
                   seed_scheme=scheme, split=split, max_pixels=max_pixels, holdout=tuple(holdout), raw=dict(data))


def _parse_component(c: Mapping, where: str) -> Component:
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
    if "t2i" in c:  # captioned images: text-to-image rows (data/t2i.py)
        _need(not {"source", "paired", "teacher", "degradations"} & set(c) and task in (None, T2I_TASK), where,
              f"a t2i component takes its images from 't2i' alone (no source/paired/teacher/degradations; task {T2I_TASK})")
        check_t2i_source(c["t2i"], where)
        kind, task, specs = "t2i", T2I_TASK, ()
    elif "degradations" in c:
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
    else:  # a built-in task: the registry names its degradation or teacher
        _need("source" in c and task in TASKS, where,
              f"give 'degradations', 'paired', 'teacher', or a built-in task ({', '.join(TASKS)}) with a 'source'")
        builtin = TASKS[task]
        kind, specs = ("teacher", ()) if builtin.teacher else ("synthetic", (builtin.degradation,))
        if builtin.photo_op is not None:
            kind, specs = "photo", ()
    inverse = c.get("inverse", 0.0)
    _need(isinstance(inverse, (int, float)) and 0 <= inverse <= 1, where, f"inverse must be in [0, 1], got {inverse!r}")
    _need(not inverse or (kind == "photo" and TASKS[task].invertible), where,
          f"inverse pairs need an invertible photo operation, not {task!r}")
    if kind not in ("photo", "t2i"):  # a t2i row's instruction is its caption
        split_task(task)  # every task needs an instruction bank (a photo op's is checked by the registry)
    if "source" in c:
        src = c["source"]
        _need(not isinstance(src, Mapping) or len({"folder", "dataset", "samples"} & set(src)) == 1,
              where, "source must be one of {folder: DIR}, {dataset: ID_OR_PATH, ...}, {samples: true}")
        _need(isinstance(src, Mapping) or hasattr(src, "load_many"), where,
              f"source must be a mapping (or, from Python, a source object), got {type(src).__name__}")
    teacher = c.get("teacher", TASKS[task].teacher if kind == "teacher" and task in TASKS else None)
    return Component(name=str(c.get("name", task)), task=task, kind=kind, source=c.get("t2i", c.get("source")),
                     paired=c.get("paired"), teacher=teacher, degradations=specs,
                     count=count, weight=weight, test_count=test_count, inverse=float(inverse))


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
