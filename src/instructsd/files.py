"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; run files are meant to be read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; when the block succeeds it replaces ``out`` in one rename.

    A crash or an error leaves ``out`` as it was and no temp folder behind. Without ``overwrite``
    an existing ``out`` is refused before anything is written.
    """
    from instructsd.errors import InstructSDError

    out = Path(out)
    if out.exists() and not overwrite:
        raise InstructSDError(f"'{out}' already exists; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; what we write is meant to be shared
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- folders the tool owns ------------------------------------------------------------------
# `--overwrite` may replace only what instructsd itself wrote (issue 17, item 7): every output
# folder it creates gets this marker, and a folder without it is never replaced or written into.

OUTPUT_MARKER = ".instructsd-output"


def mark_output_folder(folder: str | Path, command: str) -> Path:
    """Create ``folder`` if needed and mark it as written by ``command`` (e.g. 'instructsd edit')."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(folder / OUTPUT_MARKER, f"written by {command}; --overwrite may replace this folder's files\n")


def is_output_folder(folder: str | Path) -> bool:
    """True when ``folder`` carries the marker of a folder instructsd wrote."""
    return (Path(folder) / OUTPUT_MARKER).is_file()
