"""Amount following: did the model apply as much of the edit as the instruction asked? (issue 15)

A photo operation (:mod:`instructsd.data.photo_ops`) states its amount ("one stop brighter",
"slightly warmer"). An image metric against the target cannot tell "edited half as much" from
"edited the wrong way"; estimating the applied amount from (input, output) can. Each estimator
inverts its op's formula on the pixels where the formula holds (no clipping), robustly:

==============  ======================================================================
op              estimate from input ``x`` and output ``y`` (8-bit values, see each function)
==============  ======================================================================
exposure        ``ev = median log2(linear(y) / linear(x))`` over unclipped samples
contrast        least-squares slope of ``y - 0.5`` on ``x - 0.5``
saturation      least-squares slope of ``y - Y(y)`` on ``x - Y(x)`` (chroma about luma)
vibrance        least-squares ``v`` in ``y - Y = (1 + v (1 - s)) (x - Y)``
temperature     ``median [log2(R_y/R_x) - log2(B_y/B_x)]`` in linear light
tint            ``median [(log2 R ratio + log2 B ratio) / 2 - log2 G ratio]``
highlights      least-squares ``a`` in ``Y(y) - Y(x) = a w_h(Y(x))``
shadows         least-squares ``a`` in ``Y(y) - Y(x) = a w_s(Y(x))``
vignette        ``median (1 - linear ratio) / r^2`` away from the centre
grain           std of the per-pixel mean difference (inputs away from 0 and 255), levels
sharpen         least-squares ``a`` in ``y - x = a (x - blur(x))``
hue             chroma-weighted circular mean of the chroma angle change, degrees
gamma           ``median log(y) / log(x)`` over mid-tones
==============  ======================================================================

An identity output gives 0 (or a factor of 1) for every estimator.
:func:`amount_following` reports, per op, the mean absolute error between instructed and
estimated amounts and their Pearson and Spearman correlations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
from PIL import Image

from instructsd.data.photo_ops import (
    as_rgb,
    blur,
    get_op,
    highlight_weight,
    luma,
    parse_edit_params,
    radius2,
    shadow_weight,
    srgb_to_linear,
)
from instructsd.errors import InstructSDError

Estimator = Callable[[np.ndarray, np.ndarray], float]
LOW, HIGH = 16, 240
"""Samples outside [LOW, HIGH] (0-255) are left out of ratio estimates: below, 8-bit steps are
large relative to the value; above, the op may have clipped."""


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def _safe(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample mask: both values in [LOW, HIGH]."""
    return (x >= LOW) & (x <= HIGH) & (y >= LOW) & (y <= HIGH)


def _unclipped(y: np.ndarray) -> np.ndarray:
    """Per-pixel mask: no output channel at 0 or 255."""
    return ((y > 0) & (y < 255)).all(axis=-1)


def _median(values: np.ndarray, op: str) -> float:
    if values.size == 0:
        raise InstructSDError(f"amount of {op!r}: no usable pixels (all clipped or too dark); "
                              "score it on a photo with mid-tones")
    return float(np.median(values))


def _slope(a: np.ndarray, b: np.ndarray, op: str) -> float:
    """Least-squares ``k`` in ``b = k a`` (no intercept)."""
    den = float(np.sum(a * a))
    if den <= 1e-12:
        raise InstructSDError(f"amount of {op!r}: the input has no signal to measure it on "
                              "(flat or grey); score it on a textured colour photo")
    return float(np.sum(a * b) / den)


def _log_ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.log2(srgb_to_linear(_f(y)) / srgb_to_linear(_f(x)))


# --- estimators ------------------------------------------------------------------------------

def exposure_ev(x: np.ndarray, y: np.ndarray) -> float:
    """EV from the linear-light ratio, median over samples in [LOW, HIGH] in both images."""
    m = _safe(x, y)
    return _median(_log_ratio(x[m], y[m]), "exposure")


def _channel_logs(x: np.ndarray, y: np.ndarray, op: str) -> np.ndarray:
    m = _safe(x, y).all(axis=-1)
    if not m.any():
        _median(np.empty(0), op)
    return _log_ratio(x[m], y[m])


def temperature_shift(x: np.ndarray, y: np.ndarray) -> float:
    """Change of log2(R / B) in linear light (stops)."""
    lr = _channel_logs(x, y, "temperature")
    return _median(lr[:, 0] - lr[:, 2], "temperature")


def tint_shift(x: np.ndarray, y: np.ndarray) -> float:
    """Change of log2 of the (R, B) mean gain over the G gain (stops; > 0 magenta)."""
    lr = _channel_logs(x, y, "tint")
    return _median((lr[:, 0] + lr[:, 2]) / 2 - lr[:, 1], "tint")


def contrast_factor(x: np.ndarray, y: np.ndarray) -> float:
    """Slope about mid-grey, over samples the output did not clip."""
    m = (y > 0) & (y < 255)
    return _slope(_f(x[m]) - 0.5, _f(y[m]) - 0.5, "contrast")


def _chroma(x: np.ndarray) -> np.ndarray:
    v = _f(x)
    return v - luma(v)[..., None]


def saturation_factor(x: np.ndarray, y: np.ndarray) -> float:
    """Slope of the output's chroma (RGB minus luma) on the input's, unclipped pixels."""
    m = _unclipped(y)
    return _slope(_chroma(x)[m], _chroma(y)[m], "saturation")


def vibrance_amount(x: np.ndarray, y: np.ndarray) -> float:
    """``v`` with ``chroma(y) - chroma(x) = v (1 - s) chroma(x)``, ``s`` = max - min of ``x``."""
    m = _unclipped(y)
    cx, cy = _chroma(x)[m], _chroma(y)[m]
    v = _f(x)[m]
    w = (1.0 - (v.max(axis=-1) - v.min(axis=-1)))[..., None]
    return _slope(w * cx, cy - cx, "vibrance")


def _tone_amount(x: np.ndarray, y: np.ndarray, weight: Callable, op: str) -> float:
    m = _unclipped(y)
    yx, yy = luma(_f(x))[m], luma(_f(y))[m]
    return _slope(weight(yx), yy - yx, op)


def highlights_amount(x: np.ndarray, y: np.ndarray) -> float:
    """``a`` in ``Y(y) - Y(x) = a w_h(Y(x))``."""
    return _tone_amount(x, y, highlight_weight, "highlights")


def shadows_amount(x: np.ndarray, y: np.ndarray) -> float:
    """``a`` in ``Y(y) - Y(x) = a w_s(Y(x))``."""
    return _tone_amount(x, y, shadow_weight, "shadows")


def vignette_strength(x: np.ndarray, y: np.ndarray) -> float:
    """``median (1 - linear(y)/linear(x)) / r^2`` over safe samples with ``r^2 > 0.25``."""
    r2 = np.broadcast_to(radius2(*x.shape[:2])[..., None], x.shape)
    m = _safe(x, y) & (r2 > 0.25)
    ratio = srgb_to_linear(_f(y[m])) / srgb_to_linear(_f(x[m]))
    return _median((1.0 - ratio) / r2[m], "vignette")


GRAIN_MARGIN = 48


def grain_sigma(x: np.ndarray, y: np.ndarray) -> float:
    """Std of the mean-over-channels difference, in 0-255 levels, on pixels whose input lies
    in [48, 207] in every channel.

    The mask looks at the input only: dropping clipped *outputs* would drop the largest
    noise draws and bias the std low; 48 levels of headroom is 3.4 std of the strongest
    sampled grain (14). A plain std, not a MAD: the differences are multiples of 1/3 level,
    which makes the median absolute deviation jump in steps of about 0.5 level.
    """
    m = ((x >= GRAIN_MARGIN) & (x <= 255 - GRAIN_MARGIN)).all(axis=-1)
    d = (y.astype(np.float64) - x)[m].mean(axis=-1)
    _median(d, "grain")  # raises when no pixel is usable
    return float(np.std(d))


def sharpen_amount(x: np.ndarray, y: np.ndarray) -> float:
    """``a`` in ``y - x = a (x - blur(x))`` over unclipped samples."""
    fx = _f(x)
    h = fx - blur(fx)
    m = (y > 0) & (y < 255)
    return _slope(h[m], (_f(y) - fx)[m], "sharpen")


_U = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
_V = np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)


def hue_degrees(x: np.ndarray, y: np.ndarray) -> float:
    """Chroma-weighted circular mean of the change of chroma angle about the grey axis."""
    m = _unclipped(y)
    zx = _f(x)[m] @ _U + 1j * (_f(x)[m] @ _V)
    zy = _f(y)[m] @ _U + 1j * (_f(y)[m] @ _V)
    z = np.sum(zy * np.conj(zx))  # sum of |zx||zy| e^{i dtheta}: weights by both chromas
    if abs(z) <= 1e-9:
        raise InstructSDError("amount of 'hue': the input has no colour to measure a hue "
                              "rotation on; score it on a colour photo")
    # U x V points along +(1,1,1): the angle in (U, V) turns the same way as the
    # right-handed rotation photo_ops.hue_matrix applies.
    return float(np.degrees(np.angle(z)))


def gamma_value(x: np.ndarray, y: np.ndarray) -> float:
    """``median log(y) / log(x)`` over samples with ``x`` in [0.1, 0.9], ``y`` unclipped."""
    fx, fy = _f(x), _f(y)
    m = (fx >= 0.1) & (fx <= 0.9) & (y > 0) & (y < 255)
    return _median(np.log(fy[m]) / np.log(fx[m]), "gamma")


ESTIMATORS: dict[str, Estimator] = {
    "exposure": exposure_ev,
    "contrast": contrast_factor,
    "saturation": saturation_factor,
    "vibrance": vibrance_amount,
    "temperature": temperature_shift,
    "tint": tint_shift,
    "highlights": highlights_amount,
    "shadows": shadows_amount,
    "vignette": vignette_strength,
    "grain": grain_sigma,
    "sharpen": sharpen_amount,
    "hue": hue_degrees,
    "gamma": gamma_value,
}
"""Op -> estimator of its amount parameter (``photo_ops.OPS[op].amount``) from (input, output)."""


def estimate_amount(op: str, input_image: np.ndarray | Image.Image,
                    output_image: np.ndarray | Image.Image) -> float:
    """The amount of ``op`` that turns ``input_image`` into ``output_image``, in its parameter's units."""
    if op not in ESTIMATORS:
        raise InstructSDError(f"no amount estimator for photo op {op!r}; ops with one: "
                              + ", ".join(ESTIMATORS))
    x, y = as_rgb(input_image), as_rgb(output_image)
    if x.shape != y.shape:
        raise InstructSDError(f"amount of {op!r}: input {x.shape} and output {y.shape} differ "
                              "in size; resize the output to the input first")
    return ESTIMATORS[op](x, y)


# --- report ------------------------------------------------------------------------------------

def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None  # undefined: one side is constant
    return float(np.corrcoef(a, b)[0, 1])


def amount_following(rows: Iterable[Mapping]) -> dict:
    """Per op: how well the applied amount follows the instructed one.

    Args:
        rows: mappings with ``edit_params`` (JSON text, a dict, or a list for a compound
            edit), ``input`` and ``output`` images (uint8 arrays or PIL). Compound edits and
            ops without an amount estimator are counted in ``skipped`` and not scored: in a
            compound edit the amounts of different ops are confounded.

    Returns:
        ``{"ops": {op: {"param", "n", "mae", "pearson", "spearman"}}, "skipped": n}``;
        a correlation is None when the instructed (or estimated) amounts are all equal.
    """
    pairs: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    for row in rows:
        edits = parse_edit_params(row["edit_params"])
        if len(edits) != 1 or edits[0]["op"] not in ESTIMATORS:
            skipped += 1
            continue
        params = edits[0]
        op = get_op(params["op"])
        estimated = estimate_amount(op.name, row["input"], row["output"])
        pairs.setdefault(op.name, []).append((float(params[op.amount]), estimated))
    report = {}
    for name, values in sorted(pairs.items()):
        inst, est = (np.array(v) for v in zip(*values, strict=True))
        spearman = _pearson(_ranks(inst), _ranks(est))
        report[name] = {"param": get_op(name).amount, "n": len(values),
                        "mae": float(np.mean(np.abs(inst - est))),
                        "pearson": _pearson(inst, est), "spearman": spearman}
    return {"ops": report, "skipped": skipped}
