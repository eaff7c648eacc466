"""Where edits may be written: never over an input, never over files instructsd did not make.

The rules (issue 17, item 7), checked before any model loads:

- ``--out`` may not be an input file, nor a folder that holds inputs (anywhere below it).
- A ``.png`` ``--out`` names one file; any other image extension is refused rather than taken
  as a folder name (``--out o.jpg`` used to create a folder called ``o.jpg``).
- An output folder is new, empty, or one instructsd made (it carries
  :data:`instructsd.files.OUTPUT_MARKER`). Files of an earlier run there are replaced only with
  ``--overwrite``; a non-empty folder without the marker is never written into.
- An existing single ``.png`` is replaced only with ``--overwrite``, and only when it is an
  instructsd edit itself (its PNG text chunks say so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from instructsd.data.images import IMAGE_EXTENSIONS
from instructsd.errors import InstructSDError
from instructsd.files import OUTPUT_MARKER, is_output_folder, mark_output_folder

EDIT_COMMAND = "instructsd edit"


def is_single_file(out: Path) -> bool:
    """A ``.png`` ``--out`` is one output file; other image extensions are refused (not folders)."""
    suffix = out.suffix.lower()
    if suffix == ".png" and not out.is_dir():
        return True
    if suffix in IMAGE_EXTENSIONS and not out.is_dir():
        raise InstructSDError(
            f"--out {out}: edits are written as PNG; name the file {out.with_suffix('.png').name}, "
            "or give a folder name without an image extension"
        )
    return False


def check_not_an_input(out: Path, sources: Sequence[Path]) -> None:
    """Refuse an ``--out`` that is one of the inputs or a folder holding any of them."""
    target = Path(os.path.abspath(out))
    resolved = target.resolve()
    for source in sources:
        src = Path(os.path.abspath(source))
        if src == target or src.resolve() == resolved or (out.exists() and os.path.samefile(source, out)):
            raise InstructSDError(f"--out {out} is one of the input images; choose another output name")
        if src.is_relative_to(target) or src.resolve().is_relative_to(resolved):
            raise InstructSDError(
                f"--out {out} holds input images (e.g. {source}); write the edits to a new folder elsewhere"
            )


def _is_instructsd_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and any(key.startswith("instructsd:") for key in getattr(im, "text", {}))
    except Exception:  # noqa: BLE001 - unreadable: certainly not one of ours
        return False


def check_single_file(out: Path, overwrite: bool) -> None:
    """An existing ``out`` (or its ``.json`` sidecar) is replaced only with ``overwrite``, and only if ours."""
    existing = [p for p in (out, out.with_suffix(".json")) if p.exists()]
    if not existing:
        return
    if not overwrite:
        raise InstructSDError(f"{existing[0]} already exists; pass --overwrite to replace it, or choose another --out")
    if not _is_instructsd_png(out):
        raise InstructSDError(
            f"{out if out.exists() else existing[0]} was not written by {EDIT_COMMAND}; --overwrite replaces only "
            "instructsd's own outputs, so move that file away or choose another --out"
        )


def check_folder(out: Path, targets: Iterable[str], overwrite: bool) -> None:
    """``out`` is new, empty, or instructsd's; files of an earlier run are replaced only with ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise InstructSDError(f"--out {out} is a file; this run writes several images, so give a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_output_folder(out):
        raise InstructSDError(
            f"--out {out} already holds files instructsd did not write (no {OUTPUT_MARKER} marker); "
            "choose a new or empty folder"
        )
    clashes = sorted((name for name in targets if (out / name).exists()), key=lambda n: (not n.endswith(".png"), n))
    if clashes and not overwrite:
        more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
        raise InstructSDError(
            f"--out {out} already holds {clashes[0]}{more} from an earlier run; pass --overwrite to replace them, "
            "or choose another folder"
        )


def open_folder(out: Path) -> Path:
    """Create (or reuse) an output folder that :func:`check_folder` accepted, and mark it as ours."""
    if not is_output_folder(out):
        mark_output_folder(out, EDIT_COMMAND)
    return out
