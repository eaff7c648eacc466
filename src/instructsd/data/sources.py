"""Where clean photos and paired examples come from.

A source is an indexable list of named images, resolved *before* any work starts (folders
listed, pair names matched, a dataset opened) and read lazily, one image at a time, by the
build workers -- a 10,000-image build never holds more than a chunk of them.

- :class:`FolderSource`: every image under a folder, recursively (``find_images``).
- :class:`HubSource`: a ``datasets`` dataset by hub id or local path (a ``save_to_disk``
  folder, or any folder/files ``datasets.load_dataset`` reads), optionally streaming.
- :class:`SampleSource`: the photos bundled with scikit-image (``sample_images``).
- :class:`PairedSource`: (input, target) files in one of :data:`LAYOUTS`, matched by name.

Unreadable images raise :class:`InstructSDError` from :meth:`load`; the builder records
them in ``skipped.jsonl`` and goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from instructsd.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
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

    def __post_init__(self) -> None:
        root = Path(self.folder)
        self.paths = [str(p) for p in find_images(root)]  # raises for a missing/empty folder
        self.names = [str(Path(p).relative_to(root).with_suffix("")) for p in self.paths]

    def describe(self) -> str:
        return f"folder {self.folder} ({len(self.names)} images)"

    def load(self, k: int) -> Image.Image:
        return load_image(self.paths[k])

    def load_many(self, ks: Iterable[int]) -> Iterable[tuple[int, Image.Image | Exception]]:
        for k in ks:
            yield k, _try(self.load, k)


@dataclass
class SampleSource:
    """The photos that ship with scikit-image (see :mod:`instructsd.data.samples`)."""

    def __post_init__(self) -> None:
        from instructsd.data.samples import SAMPLE_FILES

        self.names = [Path(f).stem for f in SAMPLE_FILES]

    def describe(self) -> str:
        return f"scikit-image sample photos ({len(self.names)})"

    def load(self, k: int) -> Image.Image:
        return _sample_photos()[k]

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
        return self._open()

    def _to_image(self, value) -> Image.Image:
        if isinstance(value, dict) and value.get("bytes"):
            import io

            value = Image.open(io.BytesIO(value["bytes"]))
        if not isinstance(value, Image.Image):
            raise InstructSDError(f"column {self.column!r} holds {type(value).__name__}, not an image")
        from PIL import ImageOps

        return to_rgb(ImageOps.exif_transpose(value))

    def load(self, k: int) -> Image.Image:
        return dict(self.load_many([k]))[k] if self.streaming else self._to_image(self._ds[k][self.column])

    def load_many(self, ks):
        ks = sorted(set(ks))
        if not self.streaming:
            for k in ks:
                yield k, _try(lambda k: self._to_image(self._ds[k][self.column]), k)
            return
        # A stream has no random access: one pass over the covered range.
        wanted, start = set(ks), ks[0]
        stream = self._ds.skip(start).take(ks[-1] - start + 1)
        for offset, row in enumerate(stream):
            k = start + offset
            if k in wanted:
                yield k, _try(lambda r: self._to_image(r[self.column]), row)


def _try(fn, arg):
    try:
        return fn(arg)
    except Exception as err:  # noqa: BLE001 -- recorded in skipped.jsonl, the build goes on
        return err


# --- paired layouts ------------------------------------------------------------------------

LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "reds": (("train_blur", "train_sharp"), ("val_blur", "val_sharp")),
    "gopro": (("blur", "sharp"),),
    "rain13k": (("input", "target"),),
    "sidd": (("NOISY", "GT"),),
    "lol": (("low", "high"),),
}
"""Layout -> (input folder name, target folder name) pairs. A file whose path under the root
has a folder called like the first is paired with the file at the same path with that folder
replaced by the second (extension may differ); any depth, e.g. ``GOPRO/train/<seq>/blur/x.png``
<-> ``.../sharp/x.png``, ``LOL/our485/low/1.png`` <-> ``.../high/1.png``. SIDD's native
layout (``<scene>/NOISY_SRGB_010.PNG`` beside ``GT_SRGB_010.PNG``) is matched too. The
``folders`` layout takes two folders (``input``, ``target``) matched by relative path."""

_SEQUENCE_DEPTH = {"reds": 0, "gopro": 1}
"""Video layouts: how many folders above a frame's own folder the sequence folder is
(REDS ``train_blur/<seq>/<frame>``: its own; GoPro ``<seq>/blur/<frame>``: one up)."""

LAYOUT_TASKS = {"reds": "deblur", "gopro": "deblur", "rain13k": "derain", "sidd": "denoise",
                "lol": "lowlight"}
"""The task each layout's pairs teach (the post's mixture: REDS, Rain13k, SIDD, LOL)."""


@dataclass
class PairedSource:
    """(input, target) image files matched by name; see :data:`LAYOUTS`.

    Raises :class:`InstructSDError` before any work when the root is missing, the layout is
    unknown, no pair is found, or some files have no partner (the first few are named).
    """

    layout: str
    root: str | None = None
    input: str | None = None
    target: str | None = None
    names: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.layout == "folders":
            if not (self.input and self.target):
                raise InstructSDError("paired layout 'folders' needs 'input' and 'target' folders")
            self.pairs = _match_folders(Path(self.input), Path(self.target))
        elif self.layout in LAYOUTS:
            if not self.root:
                raise InstructSDError(f"paired layout {self.layout!r} needs 'root'")
            self.pairs = _match_layout(Path(self.root), self.layout)
        else:
            raise InstructSDError(
                f"unknown paired layout {self.layout!r}; choose from: {', '.join([*LAYOUTS, 'folders'])}"
            )
        self.names = [name for name, _, _ in self.pairs]
        # Video layouts: frames of one sequence are near-duplicates, so they share a split.
        if self.layout in _SEQUENCE_DEPTH:
            up = _SEQUENCE_DEPTH[self.layout]
            self.groups = ["/".join(n.split("/")[:-1 - up]) or n for n in self.names]
        else:
            self.groups = self.names

    def describe(self) -> str:
        where = self.root or f"{self.input} -> {self.target}"
        return f"{self.layout} pairs in {where} ({len(self.pairs)})"

    def load(self, k: int) -> tuple[Image.Image, Image.Image]:
        _, a, b = self.pairs[k]
        return load_image(a), load_image(b)

    def load_many(self, ks):
        for k in ks:
            yield k, _try(self.load, k)


def _stem_index(paths: Sequence[Path], root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in paths:
        key = str(p.relative_to(root).with_suffix(""))
        if key in index:
            raise InstructSDError(f"two files in '{root}' share the name {key} ({index[key].name}, "
                                  f"{p.name}); keep one")
        index[key] = p
    return index


def _mismatch(root: str, only_in: dict[str, list[str]]) -> InstructSDError:
    parts = [f"{len(v)} only in {side} (e.g. {', '.join(sorted(v)[:3])})" for side, v in only_in.items() if v]
    return InstructSDError(f"paired images in '{root}' do not match by name: {'; '.join(parts)}; "
                           "rename or remove the unpaired files")


def _match_folders(a: Path, b: Path) -> list[tuple[str, str, str]]:
    for folder in (a, b):
        if not folder.is_dir():
            raise InstructSDError(f"paired folder '{folder}' does not exist or is not a folder")
    ia, ib = _stem_index(find_images(a), a), _stem_index(find_images(b), b)
    if set(ia) != set(ib):
        raise _mismatch(f"{a}' and '{b}", {str(a): sorted(set(ia) - set(ib)),
                                             str(b): sorted(set(ib) - set(ia))})
    return [(k, str(ia[k]), str(ib[k])) for k in sorted(ia)]


def _match_layout(root: Path, layout: str) -> list[tuple[str, str, str]]:
    if not root.is_dir():
        raise InstructSDError(f"paired dataset root '{root}' does not exist or is not a folder")
    files = find_images(root)
    rel = {str(p.relative_to(root).with_suffix("")): p for p in files}
    pairs, only_in = [], {"input": [], "target": []}
    seen_targets: set[str] = set()
    for src, dst in LAYOUTS[layout]:
        for key in sorted(rel):
            parts = key.split("/")
            if src in parts[:-1]:
                i = len(parts) - 2 - parts[:-1][::-1].index(src)  # the deepest such folder
                other = "/".join(parts[:i] + [dst] + parts[i + 1:])
            elif layout == "sidd" and src in parts[-1]:
                other = "/".join(parts[:-1] + [parts[-1].replace(src, dst)])
            else:
                continue
            if other in rel:
                pairs.append((key, str(rel[key]), str(rel[other])))
                seen_targets.add(other)
            else:
                only_in["input"].append(key)
        for key in rel:
            parts = key.split("/")
            if (dst in parts[:-1] or (layout == "sidd" and dst in parts[-1])) and key not in seen_targets:
                only_in["target"].append(key)
    if only_in["input"] or only_in["target"]:
        raise _mismatch(str(root), only_in)
    if not pairs:
        names = " / ".join(f"{a}/{b}" for a, b in LAYOUTS[layout])
        raise InstructSDError(
            f"no {layout} pairs under '{root}': expected folders named {names} "
            f"holding images ({' '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))})"
        )
    return sorted(pairs)
