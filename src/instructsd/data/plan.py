"""A mixture's plan: every source resolved, every item counted and given its split, before any work.

The plan maps a global item index to ``(component, source image k, crop c)``; rows are made
from those three numbers and the seed alone (:mod:`instructsd.data.rows`), so a build gives
the same rows for any chunking, worker count or sharding.

Item order. ``seed_scheme: mixture``: component by component; within one, item ``j`` takes
source image ``used[j mod n]`` and crop ``j div n``. ``seed_scheme: legacy`` (build_dataset's
order, so its datasets keep their row order): photo by photo, crop by crop, task by task.

Splits. ``split: hash``: a seeded hash of each pair's group (:func:`_val_indices`);
``split: permutation``: build_dataset's rule (:func:`split_sources`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from instructsd.data.mixture import _PAIRED_KEYS, Component, Mixture, _paired_keys
from instructsd.data.sources import FolderSource, HubSource, PairedSource, SampleSource
from instructsd.data.t2i import open_t2i_source
from instructsd.errors import InstructSDError

_SPLIT_STREAM = 2  # build_dataset's split words [seed, 0, 0, 0, 2] (legacy rule)


# --- resolving sources: done once in the parent (errors before any work) and per worker ---


def open_source(component: Component, max_pixels: int):
    """The component's source object (folder listed, pairs matched, dataset opened)."""
    if component.kind == "t2i":
        return open_t2i_source(component.source, max_pixels)
    if component.kind == "paired":
        _, options = _paired_keys(component.paired)
        known = {k: v for k, v in component.paired.items() if k in _PAIRED_KEYS}
        return PairedSource(**known, options=options, max_pixels=max_pixels)
    if not isinstance(component.source, Mapping):
        return component.source  # a source object from Python (build_dataset's in-memory photos)
    src = dict(component.source)
    if "folder" in src:
        return FolderSource(src["folder"], max_pixels=max_pixels)
    if "samples" in src:
        return SampleSource()
    return HubSource(**src, max_pixels=max_pixels)


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
        if self.mixture.seed_scheme == "legacy":  # photo by photo, crop by crop, task by task
            n_comp, crops = len(self.counts), self.counts[0] // len(self.names[0])
            return index % n_comp, index // (n_comp * crops), (index // n_comp) % crops
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
    sources = [open_source(c, mixture.max_pixels) for c in mixture.components]
    if mixture.seed_scheme == "legacy":
        _check_legacy(mixture, sources)
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
        # Carve validation from training pairs only, unless the dataset has its own; text-to-image rows
        # all train (an edit metric on them would measure nothing).
        fraction = 0.0 if "validation" in splits or comp.kind == "t2i" else mixture.val_fraction
        plan.names.append(names)
        plan.counts.append(count + len(held))
        plan.n_train.append(count)
        plan.used.append(used)
        plan.held.append(held)
        if mixture.holdout:  # named groups, whatever the split rule
            plan.val.append({k for k in train if groups[k] in mixture.holdout} if fraction else set())
        elif mixture.split == "permutation":  # by group (a photo is its own, a stereo pair is one)
            held_out = split_sources(list(dict.fromkeys(groups[k] for k in train)), fraction, mixture.seed)
            plan.val.append({k for k in train if groups[k] in held_out})
        else:
            plan.val.append(_val_indices([groups[k] for k in used], used, fraction, mixture.seed))
        plan.splits.append(splits)
        plan.groups.append(groups)
        plan.parts.append(list(getattr(source, "parts", [""] * n)))
        plan.skipped += [{"component": comp.name, "source": key, "reason": f"unmatched: {why}"}
                         for key, why in getattr(source, "skipped", [])]
    unknown = set(mixture.holdout) - {g for groups in plan.groups for g in groups}
    if unknown:
        raise InstructSDError(f"holdout names {sorted(unknown)} match no source's group (photo); groups are the "
                              "photo names, or a paired dataset's scenes: check the spelling")
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


def split_sources(names: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """build_dataset's split rule (``split: permutation``): the source names held out for validation.

    ``round(n * val_fraction)`` photos, at least one and at least one left for train when there
    are two or more, taken from a permutation seeded ``[seed, 0, 0, 0, 2]`` (whole photos, so no
    crop leaks to train). The quickstart relies on it to hold out the tiny base's validation photos.
    """
    n = len(names)
    if n < 2 or val_fraction <= 0:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng([seed, 0, 0, 0, _SPLIT_STREAM]).permutation(n)
    return {names[int(k)] for k in order[:n_val]}


def _check_legacy(mixture: Mixture, sources: list) -> None:
    """build_dataset's scheme: every task on the same photos, the same number of crops each."""
    names = [list(s.names) for s in sources]
    counts = {c.count for c in mixture.components}
    if any(n != names[0] for n in names) or len(counts) != 1 or None in counts or not names[0] \
            or next(iter(counts)) % len(names[0]):
        raise InstructSDError("seed_scheme legacy needs every component on the same source with the same count, "
                              "a multiple of its number of images (crops per image); use the default seed_scheme")
