"""Paired datasets as they are distributed: which files pair, which official split each pair is in.

Restoration benchmarks ship as folder trees: an input folder beside a target folder
(``blur``/``sharp``, ``low``/``high``) under the parts their authors made (GoPro
``train``/``test``, LOL ``our485``/``eval15``). A :class:`Layout` names those folders, the
rules that turn an input's file name into its target's, the split each part belongs to, and
the *group* of a pair -- the sequence, scene or photo whose pairs must stay on one side of
every split, since frames of one clip or two noisy shots of one scene are near-duplicates
(issue 12). :func:`match_layout` walks a root and returns the pairs and the files it could
not pair; the on-disk trees are drawn in ``docs/data.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from instructsd.data.images import IMAGE_EXTENSIONS, find_images
from instructsd.errors import InstructSDError

SPLIT_NAMES = ("train", "validation", "test")
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PairRule:
    """An input file's name (stem, no extension) -> its target's: ``input`` is a regular
    expression that must match the whole stem, ``target`` a template whose ``{1}``, ``{2}``
    (or ``{name}`` for a named group) are filled from it, e.g. ``low(\\d+)`` -> ``normal{1}``."""

    input: str
    target: str

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.input)
        except re.error as err:
            raise InstructSDError(f"pair rule input '{self.input}' is not a valid regular expression ({err})") from None
        for name in _FIELD.findall(self.target):
            known = name in regex.groupindex or (name.isdigit() and int(name) <= regex.groups)
            if not known:
                raise InstructSDError(
                    f"pair rule target '{self.target}' uses {{{name}}} but input '{self.input}' has "
                    f"{regex.groups} group(s){' named ' + ', '.join(regex.groupindex) if regex.groupindex else ''}"
                )
        # The template read backwards: which names a target of this rule can have.
        pieces = _FIELD.split(self.target)
        pattern = "".join(re.escape(p) if i % 2 == 0 else "(.*)" for i, p in enumerate(pieces))
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_target_regex", re.compile(pattern))

    def target_for(self, stem: str) -> str | None:
        """The target's stem, or None when ``stem`` is not an input this rule knows."""
        m = self._regex.fullmatch(stem)
        if m is None:
            return None
        return _FIELD.sub(lambda f: m.group(int(f[1]) if f[1].isdigit() else f[1]) or "", self.target)

    def names_target(self, stem: str) -> bool:
        return self._target_regex.fullmatch(stem) is not None


SAME_NAME = PairRule(r"(.+)", "{1}")
JORDER = PairRule(r"(.+)x\d+", "{1}")
"""Rain100H/L as JORDER (Yang et al. 2017) ships them: ``rain/norain-1x2.png`` is a rainy
version of ``norain/norain-1.png`` (several streak variants may share one ground truth)."""


@dataclass(frozen=True)
class Layout:
    """How one dataset is laid out on disk."""

    task: str
    """The task its pairs teach."""
    folders: tuple[tuple[str, str], ...]
    """(input folder, target folder) names; a target sits at the input's path with the folder
    swapped (or directly in the target folder). Names may use an option: ``{blur}``."""
    rules: tuple[PairRule, ...] = (SAME_NAME,)
    """Input name -> target name for folder pairs, tried in order (a ``pair`` key replaces them)."""
    beside: tuple[PairRule, ...] = ()
    """Rules pairing two files in one folder (SIDD's ``NOISY``/``GT`` file names)."""
    parts: Mapping[str, str] = field(default_factory=dict)
    """Official parts: folder name (any case) -> split. The deepest such folder above an
    input decides; a pair under none is training data."""
    group: str = "photo"
    """photo | clip (the frame's folder) | sequence (the folder above) | scene (SIDD's scene folder)."""
    ignore: frozenset[str] = frozenset()
    """Folders never read (other versions of the same images)."""
    options: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    """Layout keys choosing a folder name: key -> (default, allowed values)."""


def _parts(**splits: tuple[str, ...]) -> dict[str, str]:
    return {folder.lower(): split for split, folders in splits.items() for folder in folders}


LAYOUTS: dict[str, Layout] = {
    # REDS's own test set has no public sharp frames, so its val set is where deblurring
    # papers report REDS numbers: here it is the test split (carved validation comes from train).
    "reds": Layout(
        "deblur", folders=(("train_blur", "train_sharp"), ("val_blur", "val_sharp")),
        parts=_parts(train=("train", "train_blur"), test=("val", "val_blur")), group="clip"),
    "gopro": Layout(
        "deblur", folders=(("{blur}", "sharp"),), parts=_parts(train=("train",), test=("test",)),
        group="sequence", options={"blur": ("blur", ("blur", "blur_gamma"))}),
    "rain13k": Layout(
        "derain", folders=(("input", "target"), ("rain", "norain")), rules=(SAME_NAME, JORDER),
        beside=(PairRule(r"rain-(.+)", "norain-{1}"),),
        parts=_parts(train=("train", "Rain13K"),
                     test=("test", "Rain100H", "Rain100L", "Test100", "Test1200", "Test2800"))),
    # SIDD-Medium has no official split (its validation/benchmark blocks ship separately as
    # .mat files): validation is carved by scene, since a scene's shots share one ground truth.
    "sidd": Layout(
        "denoise", folders=(("NOISY", "GT"),), beside=(PairRule(r"(.*)NOISY(.*)", "{1}GT{2}"),),
        group="scene"),
    "lol": Layout(  # LOL v1 (low/high) and LOL-v2 (Low/Normal, low00001 <-> normal00001)
        "lowlight", folders=(("low", "high"), ("Low", "Normal")),
        rules=(SAME_NAME, PairRule(r"low(\d+)", "normal{1}")),
        parts=_parts(train=("our485", "Train"), test=("eval15", "Test"))),
    "dpdd": Layout(  # the combined images; the dual-pixel left/right views are not read
        "deblur", folders=(("source", "target"),),
        parts=_parts(train=("train_c",), validation=("val_c",), test=("test_c",)),
        ignore=frozenset(f"{s}_{v}" for s in ("train", "val", "test") for v in "lr")),
    "fivek": Layout(  # no official split: validation is carved by photo
        "retouch", folders=(("input", "expert{expert}"),), options={"expert": ("C", tuple("ABCDE"))}),
}
"""The paired layouts a mixture's ``paired: {layout: ...}`` names; ``folders`` is the generic one."""

LAYOUT_TASKS = {name: layout.task for name, layout in LAYOUTS.items()}


@dataclass(frozen=True)
class Pair:
    name: str
    """The input's path under the root, no extension."""
    input: str
    target: str
    group: str
    """The sequence, scene or photo: pairs of one group always share a split."""
    split: str
    """Official split: train | validation | test."""
    part: str
    """The folder that set the split (``eval15``, ``Rain100H``); "" when none did."""


@dataclass
class Matched:
    pairs: list[Pair]
    unmatched: list[tuple[str, str]]
    """(file under the root, why it was not paired)."""


def layout_options(name: str, given: Mapping[str, str]) -> dict[str, str]:
    """The layout's option values (defaults filled in); unknown keys or values are errors."""
    layout = LAYOUTS[name]
    unknown = sorted(set(given) - set(layout.options))
    if unknown:
        allowed = ", ".join(layout.options) or "none"
        raise InstructSDError(f"paired layout {name!r} has no key(s) {unknown} (its options: {allowed})")
    values = {}
    for key, (default, allowed) in layout.options.items():
        value = str(given.get(key, default))
        if value not in allowed:
            raise InstructSDError(f"paired layout {name!r}: {key} must be one of {', '.join(allowed)}, got {value!r}")
        values[key] = value
    return values


def match_layout(root: Path, name: str, *, rule: PairRule | None = None,
                 options: Mapping[str, str] | None = None) -> Matched:
    """Every pair of layout ``name`` under ``root``, and the files that have no partner."""
    layout = LAYOUTS[name]
    if not root.is_dir():
        raise InstructSDError(f"paired dataset root '{root}' does not exist or is not a folder")
    values = layout_options(name, options or {})
    folders = [(a.format(**values), b.format(**values)) for a, b in layout.folders]
    rules = (rule,) if rule else layout.rules
    rel = _index(root, [p for p in find_images(root)
                        if not layout.ignore & set(p.relative_to(root).parts[:-1])])
    pairs, unmatched, used = [], [], set()
    for key in sorted(rel):
        parts = key.split("/")
        where = _pair_folder(parts, folders)
        if where is not None:
            i, src, dst, is_input = where
            if not is_input:
                continue
            mirrored = parts[:i] + [dst] + parts[i + 1:-1]
            target = _find(rel, [mirrored, parts[:i] + [dst]], parts[-1], rules)
            if target is None:
                unmatched.append((key, f"input without a target in {'/'.join(mirrored)}"))
                continue
            # Named on the input side, so every target folder (FiveK's experts) groups alike.
            photo = parts[:i] + [src] + target.split("/")[i + 1:]
            above = parts[:i + 1]
        else:
            stems = [r.target_for(parts[-1]) for r in layout.beside]
            stem = next((s for s in stems if s and s != parts[-1] and "/".join(parts[:-1] + [s]) in rel), None)
            if stem is None:
                if any(s and s != parts[-1] for s in stems):
                    unmatched.append((key, f"input without a target (looked for {', '.join(filter(None, stems))} beside it)"))
                continue
            target = "/".join(parts[:-1] + [stem])
            photo, above = target.split("/"), parts[:-1]
        used.add(target)
        split, part = _official(layout, [root.name, *above])
        group = _group(layout.group, "/".join(photo))
        pairs.append(Pair(key, str(rel[key]), str(rel[target]), group, split, part))
    for key in sorted(set(rel) - used):
        parts = key.split("/")
        where = _pair_folder(parts, folders)
        is_target = (where is not None and not where[3]) or (
            where is None and any(r.names_target(parts[-1]) for r in layout.beside)
            and not any(r.target_for(parts[-1]) for r in layout.beside))
        if is_target:
            unmatched.append((key, "target without an input"))
    if not pairs and not unmatched:
        names = " / ".join(f"{a}/{b}" for a, b in folders)
        exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise InstructSDError(f"no {name} pairs under '{root}': expected folders named {names} holding images ({exts})")
    return Matched(pairs, sorted(unmatched))


def match_folders(a: Path, b: Path, *, rule: PairRule | None = None) -> Matched:
    """Files of folder ``a`` paired with files of ``b`` at the same relative path (by ``rule``)."""
    for folder in (a, b):
        if not folder.is_dir():
            raise InstructSDError(f"paired folder '{folder}' does not exist or is not a folder")
    ia, ib = _index(a, find_images(a)), _index(b, find_images(b))
    rules = (rule,) if rule else (SAME_NAME,)
    pairs, unmatched, used = [], [], set()
    for key in sorted(ia):
        parts = key.split("/")
        target = _find(ib, [parts[:-1]], parts[-1], rules)
        if target is None:
            unmatched.append((f"{a.name}/{key}", f"input without a target in '{b}'"))
            continue
        used.add(target)
        pairs.append(Pair(key, str(ia[key]), str(ib[target]), target, "train", ""))
    unmatched += [(f"{b.name}/{k}", "target without an input") for k in sorted(set(ib) - used)]
    return Matched(pairs, unmatched)


def _index(root: Path, paths) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in paths:
        key = p.relative_to(root).with_suffix("").as_posix()
        if key in index:
            raise InstructSDError(f"two files in '{root}' share the name {key} ({index[key].name}, "
                                  f"{p.name}); keep one")
        index[key] = p
    return index


def _pair_folder(parts: list[str], folders) -> tuple[int, str, str, bool] | None:
    """The deepest folder of the path that is an input or target folder: (index, input
    folder, target folder, is it the input)."""
    for i in range(len(parts) - 2, -1, -1):
        for src, dst in folders:
            if parts[i] in (src, dst):
                return i, src, dst, parts[i] == src
    return None


def _find(index, dirs, stem: str, rules) -> str | None:
    for d in dirs:
        for rule in rules:
            other = rule.target_for(stem)
            if other is not None and "/".join([*d, other]) in index:
                return "/".join([*d, other])
    return None


def _official(layout: Layout, folders: list[str]) -> tuple[str, str]:
    for folder in reversed(folders):
        if folder.lower() in layout.parts:
            return layout.parts[folder.lower()], folder
    return "train", ""


_SIDD_SCENE = re.compile(r"\d{4}_\d{3}_")


def _group(kind: str, photo: str) -> str:
    parts = photo.split("/")
    if kind == "clip":
        up = parts[:-1]
    elif kind == "sequence":
        up = parts[:-2]
    elif kind == "scene":
        scenes = [i for i, p in enumerate(parts[:-1]) if _SIDD_SCENE.match(p)]
        up = parts[:scenes[-1] + 1] if scenes else []
    else:
        up = []
    return "/".join(up) or photo
