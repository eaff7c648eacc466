"""Rows a builder makes from photo operations beyond one edit: compound edits and inverse pairs (issue 15).

A compound edit applies two operations in order (its ``edit_params`` is a list). An inverse pair is
(edited image, the opposite instruction, the original), kept only where the inverse really restores
the original: clipping makes some operations (exposure) only approximately invertible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from instructsd.data.photo_ops import INVERSE_TOLERANCE, OPS, apply, as_rgb, get_op, sample_edit
from instructsd.errors import InstructSDError


def sample_compound(rng: np.random.Generator, ops: Sequence[str] | None = None,
                    n: int = 2) -> list[dict]:
    """``n`` distinct ops drawn from ``ops`` (default: all but the monochrome ones, whose
    result would hide a colour edit applied before or after), each with sampled params."""
    pool = list(ops) if ops is not None else [
        n_ for n_ in OPS if n_ not in ("black_and_white", "sepia")]
    if len(pool) < n:
        raise InstructSDError(f"a compound edit of {n} ops needs {n} distinct ops; got {pool}")
    picked = rng.choice(len(pool), size=n, replace=False)
    return [sample_edit(pool[int(i)], rng) for i in picked]


def inverse_error(original: np.ndarray, edited: np.ndarray, op: str, inverse: Mapping) -> float:
    """99th percentile |apply(inverse, edited) - original| in 0-255 levels."""
    back = apply(op, edited, inverse).astype(np.int16)
    return float(np.percentile(np.abs(back - as_rgb(original).astype(np.int16)), 99))


def inverse_pair(op: str, image: np.ndarray | Image.Image, params: Mapping,
                 tolerance: float = INVERSE_TOLERANCE) -> tuple[np.ndarray, dict] | None:
    """``(edited, inverse_params)`` for the row (edited, opposite instruction, original).

    Returns None when the inverse does not bring the original back within ``tolerance``
    (99th percentile, levels), e.g. +1 EV on a bright photo, whose clipped highlights are
    lost; the row's target would then not be what the instruction asks for.
    """
    o = get_op(op)
    original = as_rgb(image)
    edited = apply(op, original, params)
    inv = o.inverse(params)
    if inverse_error(original, edited, op, inv) > tolerance:
        return None
    return edited, inv
