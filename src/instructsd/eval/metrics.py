"""Pixel metrics (PSNR, SSIM on RGB and on Y, L1, L2) and their per-task summary with bootstrap intervals.

Every pixel metric shares one signature, `metric(pred, target) -> float`, on RGB uint8 images
of the same size, so `PIXEL_METRICS` can be looped over. Callers resize before scoring: a
metric never resamples, because how to resize is an evaluation choice, not the metric's.
Metrics that need a network (CLIP, DINO, LPIPS) live in `eval.features`; docs/evaluation.md
gives every metric's exact definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# PSNR of identical images is infinite; one such pair would make a mean infinite, so we cap.
# Real edits score 10-40 dB; a single value off by one level in a 64x64 image is already 89 dB,
# so the cap only changes scores of identical or near-identical images.
PSNR_CAP_DB = 100.0

# skimage's default SSIM window (7x7, Wang et al. 2004 use 11x11 Gaussian; skimage a 7x7 box).
_SSIM_WIN = 7

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
ALL_TASKS = "all"


# ----------------------------------------------------------------------------
# Images


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image (any mode) or a uint8 HxW / HxWx3 array, as a uint8 HxWx3 RGB array."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        # Floats in [0, 1] and in [0, 255] both occur; guessing which would skew every score.
        raise ValueError(f"expected a uint8 array, got dtype {img.dtype}; convert to uint8 0..255 first")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(f"expected an HxW or HxWx3 array, got shape {img.shape}")


def _pair(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_array(pred), to_array(target)
    if a.shape != b.shape:
        # Sizes as (width x height), the way PIL and users describe images.
        raise ValueError(
            f"pred is {a.shape[1]}x{a.shape[0]} but target is {b.shape[1]}x{b.shape[0]} (WxH); "
            "resize one to the other before scoring"
        )
    return a, b


# ----------------------------------------------------------------------------
# Metrics: metric(pred, target) -> float, higher is better


def psnr(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray, cap: float | None = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB, 10*log10(255^2 / MSE), over all RGB values.

    Identical images give 100.0 dB (`PSNR_CAP_DB`) rather than infinity, so means stay finite;
    pass ``cap=None`` for the mathematical value (``inf`` for identical images).
    """
    a, b = _pair(pred, target)
    with np.errstate(divide="ignore"):  # MSE == 0 -> inf, which the cap below handles
        value = float(peak_signal_noise_ratio(b, a, data_range=255))
    return value if cap is None else min(value, cap)


def ssim(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004) over RGB channels, in [-1, 1].

    Uses skimage's 7x7 window, shrunk to the largest odd size that fits for images smaller
    than 7 px on a side; images under 3 px on a side have no defined SSIM and raise.
    """
    a, b = _pair(pred, target)
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        raise ValueError(f"SSIM needs images at least 3x3 px, got {a.shape[1]}x{a.shape[0]}")
    win = min(_SSIM_WIN, side if side % 2 == 1 else side - 1)
    return float(structural_similarity(b, a, channel_axis=-1, data_range=255, win_size=win))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma as MATLAB's rgb2ycbcr computes it: Y in [16, 235], float64.

    This is the Y the super-resolution and restoration literature scores on (e.g. BasicSR's
    `test_y_channel`); skimage's rgb2ycbcr implements the same matrix.
    """
    return rgb2ycbcr(rgb)[..., 0]


def psnr_y(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR in dB on the BT.601 Y channel (data range 255), capped like `psnr`."""
    a, b = _pair(pred, target)
    ya, yb = _luma(a), _luma(b)
    with np.errstate(divide="ignore"):
        value = float(peak_signal_noise_ratio(yb, ya, data_range=255))
    return value if cap is None else min(value, cap)


def ssim_y(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    """SSIM on the BT.601 Y channel, with the same window as `ssim` (data range 255)."""
    a, b = _pair(pred, target)
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        raise ValueError(f"SSIM needs images at least 3x3 px, got {a.shape[1]}x{a.shape[0]}")
    win = min(_SSIM_WIN, side if side % 2 == 1 else side - 1)
    return float(structural_similarity(_luma(b), _luma(a), data_range=255, win_size=win))


def l1(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    """Mean absolute difference on RGB values scaled to [0, 1] (MagicBrush's L1; lower is better)."""
    a, b = _pair(pred, target)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


def l2(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    """Mean squared difference on RGB values scaled to [0, 1] (MagicBrush's "L2", i.e. torch's MSELoss; lower is better)."""
    a, b = _pair(pred, target)
    return float((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean())


Metric = Callable[[Image.Image | np.ndarray, Image.Image | np.ndarray], float]

# The quickstart's and `run_eval`'s two headline metrics.
METRICS: dict[str, Metric] = {
    "psnr": psnr,
    "ssim": ssim,
}

# Every metric that needs only the output and the ground truth, in report order.
PIXEL_METRICS: dict[str, Metric] = {
    "psnr": psnr,
    "ssim": ssim,
    "psnr_y": psnr_y,
    "ssim_y": ssim_y,
    "l1": l1,
    "l2": l2,
}

# Metrics where a smaller value is the better one (the report marks the minimum as best).
LOWER_IS_BETTER = frozenset({"l1", "l2", "lpips"})


# ----------------------------------------------------------------------------
# Summary: mean and 95% percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13)


def _bootstrap(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles of the resampled means, per column of `values` (n x k)."""
    n = values.shape[0]
    if n == 1:
        return values[0], values[0]
    # Columns share the resampled rows: each resample is one set of examples, scored by all metrics.
    idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    means = values[idx].mean(axis=1)  # (resamples, k)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return lo, hi


def summarize(
    rows: list[dict[str, Any]],
    group_key: str = "task",
    metric_keys: Sequence[str] = ("psnr", "ssim"),
) -> list[dict[str, Any]]:
    """Per (group, method): n, mean and 95% bootstrap interval of each metric.

    `rows` are per-example scores such as {"task": "denoise", "method": "model", "psnr": 21.3,
    "ssim": 0.71}. Besides one row per (group, method), each method gets a row whose group is
    "all", pooling its examples across groups. Output rows look like {"task": "denoise",
    "method": "model", "n": 4, "psnr": 21.3, "psnr_lo": 20.1, "psnr_hi": 22.0, "ssim": ...},
    sorted by group then method, with the "all" rows last.

    Each interval uses its own generator seeded with `BOOTSTRAP_SEED`, so a group's interval
    does not depend on which other groups are in the table.
    """
    groups: dict[tuple[str, str], list[list[float]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (group_key, "method", *metric_keys) if k not in row]
        if missing:
            raise ValueError(f"metric row {i} lacks {missing}; it has keys {sorted(row)}")
        group, method = str(row[group_key]), str(row["method"])
        if group == ALL_TASKS:
            raise ValueError(f"metric row {i}: {group_key} {ALL_TASKS!r} is reserved for the pooled rows; rename it")
        values = [float(row[k]) for k in metric_keys]
        if not all(np.isfinite(values)):
            raise ValueError(f"metric row {i} ({group}/{method}) has a non-finite score: {dict(zip(metric_keys, values))}")
        groups.setdefault((group, method), []).append(values)
        groups.setdefault((ALL_TASKS, method), []).append(values)

    order = sorted(groups, key=lambda gm: (gm[0] == ALL_TASKS, gm[0], gm[1]))
    out = []
    for group, method in order:
        values = np.asarray(groups[group, method], dtype=np.float64)
        lo, hi = _bootstrap(values, np.random.default_rng(BOOTSTRAP_SEED))
        summary: dict[str, Any] = {group_key: group, "method": method, "n": len(values)}
        for j, key in enumerate(metric_keys):
            summary[key] = float(values[:, j].mean())
            summary[f"{key}_lo"] = float(lo[j])
            summary[f"{key}_hi"] = float(hi[j])
        out.append(summary)
    return out
