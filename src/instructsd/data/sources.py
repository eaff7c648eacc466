"""Where clean photos and paired examples come from.

A source is an indexable list of named images, resolved *before* any work starts (folders
listed, pair names matched, a dataset opened) and read lazily, one image at a time, by the
build workers -- a 10,000-image build never holds more than a chunk of them.

- :class:`FolderSource`: every image under a folder, recursively (``find_images``).
- :class:`HubSource`: a ``datasets`` dataset by hub id or local path (a ``save_to_disk``
  folder, or any folder/files ``datasets.load_dataset`` reads), optionally streaming.
- :class:`SampleSource`: the photos bundled with scikit-image (``sample_images``).
- :class:`MemorySource`: ``(name, PIL image)`` pairs already in memory (``build_dataset``).
- :class:`PairedSource`: (input, target) files of a distributed dataset, in one of
  :data:`~instructsd.data.layouts.LAYOUTS`, with their official splits and groups.

Unreadable images, and images over ``max_pixels`` (checked before decoding), raise
:class:`InstructSDError` from :meth:`load`; the builder records them in ``skipped.jsonl`` and goes on.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from instructsd.data.images import DEFAULT_MAX_PIXELS, check_pixels, find_images, load_image, to_rgb
from instructsd.data.layouts import LAYOUTS, PairRule, match_folders, match_layout
from instructsd.errors import InstructSDError

@functools.cache
def _sample_photos() -> list[Image.Image]:
    """Decoded once per process, shared by every component that uses the samples."""
    from instructsd.data.samples import sample_images

    return [im for _, im in sample_images()]


# --- single images -------------------------------------------------------------------------


@dataclass
class FolderSource:
    """All images under ``folder`` (recursive, sorted; hidden files skipped)."""

    folder: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        root = Path(self.folder)
        self.paths = [str(p) for p in find_images(root)]  # raises for a missing/empty folder
        self.names = [str(Path(p).relative_to(root).with_suffix("")) for p in self.paths]

    def describe(self) -> str:
        return f"folder {self.folder} ({len(self.names)} images)"

    def load(self, k: int) -> Image.Image:
        return load_image(self.paths[k], self.max_pixels)

    def load_many(self, ks: Iterable[int]) -> Iterable[tuple[int, Image.Image | Exception]]:
        for k in ks:
            yield k, _try(self.load, k)


@dataclass
class SampleSource:
    """The photos that ship with scikit-image and scikit-learn (see :mod:`instructsd.data.samples`)."""

    def __post_init__(self) -> None:
        from instructsd.data.samples import GROUPS, sample_paths

        # sample_images' order (sorted by name), so name k is the photo load(k) returns
        self.names = sorted(p.stem for p in sample_paths())
        self.groups = [GROUPS.get(n, n) for n in self.names]

    def describe(self) -> str:
        return f"bundled sample photos ({len(self.names)})"

    def load(self, k: int) -> Image.Image:
        return _sample_photos()[k]

    def load_many(self, ks):
        for k in ks:
            yield k, _try(self.load, k)


class MemorySource:
    """``(name, image)`` pairs already decoded (``build_dataset``'s photos); names must be unique.

    Its text (``str``) names a digest of the pixels, so a build's fingerprint changes with them
    and the parts of another set of photos are never reused.
    """

    def __init__(self, images: Sequence[tuple[str, Image.Image]], max_pixels: int = DEFAULT_MAX_PIXELS,
                 groups: Mapping[str, str] | None = None) -> None:
        self.names = [str(name) for name, _ in images]
        # A photo is its own group unless ``groups`` says otherwise (a stereo pair's two halves are one).
        self.groups = [str((groups or {}).get(name, name)) for name in self.names]
        self.images = [im for _, im in images]
        self.max_pixels = max_pixels
        digest = hashlib.sha256()
        for name, im in zip(self.names, self.images):
            digest.update(f"{name}\0{im.mode}\0{im.size}\0".encode())
            digest.update(im.tobytes())
        self.digest = digest.hexdigest()[:16]

    def __str__(self) -> str:
        return f"{len(self.names)} photos in memory (sha256 {self.digest})"

    def describe(self) -> str:
        return str(self)

    def load(self, k: int) -> Image.Image:
        check_pixels(self.images[k], self.max_pixels, self.names[k])
        return to_rgb(self.images[k])

    def load_many(self, ks):
        for k in ks:
            yield k, _try(self.load, k)


@dataclass
class HubSource:
    """A ``datasets`` dataset: hub id or local path, one image column.

    Args:
        dataset: hub id (``"frgfm/imagenette"``), a ``save_to_disk`` folder, or a folder of
            data files (parquet, imagefolder) that ``datasets.load_dataset`` understands.
        split: which split to read.
        column: the image column; default: the first column of type ``Image``.
        streaming: read with ``streaming=True`` (nothing downloaded up front); needs
            ``limit``, since a stream's length is unknown.
        limit: use only the first ``limit`` images.
        name_column: column whose values name the rows; default ``"<dataset>[<index>]"``.
        config: the dataset configuration name, if it has several.
    """

    dataset: str
    split: str = "train"
    column: str | None = None
    streaming: bool = False
    limit: int | None = None
    name_column: str | None = None
    config: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.streaming and not self.limit:
            raise InstructSDError(
                f"dataset source {self.dataset!r}: streaming needs 'limit' (how many images "
                "to take), since a stream's length is unknown"
            )
        ds = self._open()
        features = ds.features or {}
        if self.column is None:
            import datasets

            images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
            if not images:
                raise InstructSDError(
                    f"dataset {self.dataset!r} has no image column (columns: "
                    f"{', '.join(features) or 'unknown'}); set 'column'"
                )
            self.column = images[0]
        elif features and self.column not in features:
            raise InstructSDError(
                f"dataset {self.dataset!r} has no column {self.column!r}; it has: {', '.join(features)}"
            )
        if self.streaming:
            n = self.limit
        else:
            n = len(ds) if self.limit is None else min(self.limit, len(ds))
        if self.name_column and not self.streaming:
            self.names = [str(v) for v in ds.select(range(n))[self.name_column]]
        else:
            self.names = [f"{self.dataset}[{k}]" for k in range(n)]

    def describe(self) -> str:
        return (f"dataset {self.dataset} split {self.split} column {self.column} "
                f"({len(self.names)} images{', streaming' if self.streaming else ''})")

    def _open(self):
        import datasets

        path = Path(self.dataset)
        try:
            if path.is_dir() and ((path / "dataset_info.json").is_file()
                                  or (path / "dataset_dict.json").is_file()):
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[self.split]
                return ds.to_iterable_dataset() if self.streaming else ds
            return datasets.load_dataset(self.dataset, self.config, split=self.split,
                                         streaming=self.streaming)
        except InstructSDError:
            raise
        except Exception as err:  # noqa: BLE001 -- hub, file and config errors alike
            raise InstructSDError(
                f"cannot open dataset {self.dataset!r} split {self.split!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); check the id/path and split"
            ) from err

    @functools.cached_property
    def _ds(self):
        """Rows with undecoded images: the pixel limit is checked from the header before decoding."""
        import datasets

        ds = self._open()
        if isinstance((ds.features or {}).get(self.column), datasets.Image):
            ds = ds.cast_column(self.column, datasets.Image(decode=False))
        return ds

    def _to_image(self, value) -> Image.Image:
        if isinstance(value, dict) and value.get("bytes"):
            import io

            value = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            value = Image.open(value["path"])
        if isinstance(value, Image.Image):
            check_pixels(value, self.max_pixels, self.column)
        if not isinstance(value, Image.Image):
            raise InstructSDError(f"column {self.column!r} holds {type(value).__name__}, not an image")
        from PIL import ImageOps

        return to_rgb(ImageOps.exif_transpose(value))

    def _item(self, row: dict):
        """What ``load`` gives for one row (a captioned source adds the caption: data/t2i.py)."""
        return self._to_image(row[self.column])

    def load(self, k: int) -> Image.Image:
        return dict(self.load_many([k]))[k] if self.streaming else self._item(self._ds[k])

    def load_many(self, ks):
        ks = sorted(set(ks))
        if not self.streaming:
            for k in ks:
                yield k, _try(lambda k: self._item(self._ds[k]), k)
            return
        # A stream has no random access: one pass over the covered range.
        wanted, start = set(ks), ks[0]
        stream = self._ds.skip(start).take(ks[-1] - start + 1)
        for offset, row in enumerate(stream):
            k = start + offset
            if k in wanted:
                yield k, _try(self._item, row)


def _try(fn, arg):
    try:
        return fn(arg)
    except Exception as err:  # noqa: BLE001 -- recorded in skipped.jsonl, the build goes on
        return err


# --- paired layouts ------------------------------------------------------------------------

UNMATCHED = ("error", "skip")


@dataclass
class PairedSource:
    """(input, target) image files of a distributed dataset; see :mod:`instructsd.data.layouts`.

    Per pair: ``names`` (the input's path), ``groups`` (sequence, scene or photo), ``splits``
    (official: train, validation or test) and ``parts`` (the folder that said so).

    Raises :class:`InstructSDError` before any work when the root is missing, the layout is
    unknown, no pair is found, or -- unless ``unmatched="skip"`` -- some files have no
    partner (counted, the first few named). Skipped files are kept in ``unmatched``.
    """

    layout: str
    root: str | None = None
    input: str | None = None
    target: str | None = None
    pair: Mapping[str, str] | None = None
    """A pairing rule ``{input: REGEX, target: TEMPLATE}`` replacing the layout's name rules."""
    unmatched: str = "error"
    """``error`` | ``skip`` (files without a partner go to ``skipped.jsonl``)."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Layout keys, e.g. FiveK's ``expert``."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    names: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        rule = PairRule(**self.pair) if self.pair else None
        if self.unmatched not in UNMATCHED:
            raise InstructSDError(f"paired 'unmatched' must be one of {', '.join(UNMATCHED)}, got {self.unmatched!r}")
        if self.layout == "folders":
            if not (self.input and self.target):
                raise InstructSDError("paired layout 'folders' needs 'input' and 'target' folders")
            found = match_folders(Path(self.input), Path(self.target), rule=rule)
            where = f"'{self.input}' and '{self.target}'"
        elif self.layout in LAYOUTS:
            if not self.root:
                raise InstructSDError(f"paired layout {self.layout!r} needs 'root'")
            found = match_layout(Path(self.root), self.layout, rule=rule, options=self.options)
            where = f"'{self.root}'"
        else:
            raise InstructSDError(
                f"unknown paired layout {self.layout!r}; choose from: {', '.join([*LAYOUTS, 'folders'])}"
            )
        if found.unmatched and self.unmatched == "error":
            raise _mismatch(where, found.unmatched)
        if not found.pairs:
            raise InstructSDError(f"no pairs in {where}: {len(found.unmatched)} files, none with a partner "
                                  f"(e.g. {found.unmatched[0][0]}); check the layout or give a 'pair' rule")
        self.pairs = [(p.name, p.input, p.target) for p in found.pairs]
        self.names = [p.name for p in found.pairs]
        self.groups = [p.group for p in found.pairs]
        self.splits = [p.split for p in found.pairs]
        self.parts = [p.part for p in found.pairs]
        self.skipped = found.unmatched

    def describe(self) -> str:
        where = self.root or f"{self.input} -> {self.target}"
        return f"{self.layout} pairs in {where} ({len(self.pairs)})"

    def load(self, k: int) -> tuple[Image.Image, Image.Image]:
        _, a, b = self.pairs[k]
        return load_image(a, self.max_pixels), load_image(b, self.max_pixels)

    def load_many(self, ks):
        for k in ks:
            yield k, _try(self.load, k)


def _mismatch(where: str, unmatched: list[tuple[str, str]]) -> InstructSDError:
    by_why: dict[str, list[str]] = {}
    for key, why in unmatched:
        by_why.setdefault(why.split(" (")[0].split(" in ")[0], []).append(key)
    parts = [f"{why}: {len(keys)} (e.g. {', '.join(keys[:3])})" for why, keys in sorted(by_why.items())]
    return InstructSDError(
        f"paired images in {where} do not match by name: {'; '.join(parts)}; rename or remove them, give a "
        "'pair' rule ({input: REGEX, target: TEMPLATE}), or set unmatched: skip to build without "
        "them (they are listed in skipped.jsonl)"
    )
