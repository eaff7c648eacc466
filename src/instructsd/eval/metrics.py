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
from scipy.ndimage import correlate1d
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio

# PSNR of identical images is infinite; one such pair would make a mean infinite, so we cap.
# Real edits score 10-40 dB; a single value off by one level in a 64x64 image is already 89 dB,
# so the cap only changes scores of identical or near-identical images.
PSNR_CAP_DB = 100.0

# SSIM windows (issue 12). "gaussian": Wang et al. 2004's 11x11 Gaussian, sigma 1.5, with
# population (co)variances -- the SSIM restoration papers report (their MATLAB ssim_index.m,
# BasicSR's calculate_ssim, torchmetrics' default). "uniform7": the 7x7 box with sample
# (co)variances that scikit-image uses by default and instructsd used before issue 12; it
# scores the same pair higher (0.745 vs 0.670 in the issue), so it is kept only to compare
# with old numbers.
SSIM_WINDOWS = ("gaussian", "uniform7")
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004, eq. 7 and 9
_GAUSS_SIDE, _GAUSS_SIGMA, _UNIFORM_SIDE = 11, 1.5, 7

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


def _ssim_window(window: str, side: int) -> tuple[np.ndarray, float]:
    """(1-D weights, covariance correction) of a separable SSIM window fitting a ``side``-px image.

    Images smaller than the window (under 11 px, or 7 px for "uniform7") get the largest odd
    window that fits, the Gaussian keeping sigma 1.5 (its tails cut, weights renormalised).
    """
    if window not in SSIM_WINDOWS:
        raise ValueError(f"unknown SSIM window {window!r}; use one of {', '.join(SSIM_WINDOWS)}")
    full = _GAUSS_SIDE if window == "gaussian" else _UNIFORM_SIDE
    size = min(full, side if side % 2 == 1 else side - 1)
    if window == "gaussian":
        x = np.arange(size, dtype=np.float64) - size // 2
        weights = np.exp(-(x**2) / (2 * _GAUSS_SIGMA**2))
        return weights / weights.sum(), 1.0
    n = size * size  # skimage's use_sample_covariance: unbiased (co)variances over the n window pixels
    return np.full(size, 1.0 / size), n / (n - 1.0)


def _ssim_channel(x: np.ndarray, y: np.ndarray, weights: np.ndarray, cov_norm: float, data_range: float) -> float:
    """Mean SSIM map of one channel (Wang et al. 2004, eq. 13), over the pixels whose whole window
    lies in the image (MATLAB's filter2 'valid'), so borders are never padded."""
    r = len(weights) // 2

    def blur(im: np.ndarray) -> np.ndarray:
        out = correlate1d(correlate1d(im, weights, axis=0, mode="reflect"), weights, axis=1, mode="reflect")
        return out[r:out.shape[0] - r, r:out.shape[1] - r]

    mx, my = blur(x), blur(y)
    vx = cov_norm * (blur(x * x) - mx * mx)
    vy = cov_norm * (blur(y * y) - my * my)
    cxy = cov_norm * (blur(x * y) - mx * my)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def _ssim_planes(a: np.ndarray, b: np.ndarray, window: str) -> float:
    """Mean SSIM over the channels of two float HxWxC arrays on a 0..255 scale."""
    side = min(a.shape[0], a.shape[1])
    if side < 3:
        raise ValueError(f"SSIM needs images at least 3x3 px, got {a.shape[1]}x{a.shape[0]}")
    weights, cov_norm = _ssim_window(window, side)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], weights, cov_norm, 255.0) for c in range(a.shape[2])]))


def ssim(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray, window: str = "gaussian") -> float:
    """Mean structural similarity (Wang et al. 2004) over RGB channels, in [-1, 1].

    ``window="gaussian"`` (default): 11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03, L 255,
    population (co)variances, valid region only, no downsampling -- the restoration papers'
    SSIM. ``window="uniform7"``: scikit-image's default 7x7 box (instructsd before issue 12).
    Images under 11 px on a side get the largest odd window that fits; under 3 px, raise.
    """
    a, b = _pair(pred, target)
    return _ssim_planes(a.astype(np.float64), b.astype(np.float64), window)


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


def ssim_y(pred: Image.Image | np.ndarray, target: Image.Image | np.ndarray, window: str = "gaussian") -> float:
    """SSIM on the BT.601 Y channel (Y in [16, 235], L = 255), with the same windows as `ssim`."""
    a, b = _pair(pred, target)
    return _ssim_planes(_luma(a)[..., None], _luma(b)[..., None], window)


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
LOWER_IS_BETTER = frozenset({"l1", "l2", "lpips", "identity_rate", "preservation", "preservation_lpips"})
# Metrics with no better direction (read against the ground truth's value): never marked best.
UNRANKED = frozenset({"edit_strength", "edit_strength_lpips"})

# Digits shown per metric; others use 4 significant digits.
METRIC_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.3f}", "psnr_y": "{:.2f}", "ssim_y": "{:.3f}", "l1": "{:.4f}",
                   "l2": "{:.4f}", "lpips": "{:.3f}", "clip_image": "{:.3f}", "clip_dir": "{:.3f}", "clip_t": "{:.3f}",
                   "clip_i": "{:.3f}", "dino": "{:.3f}", "identity_rate": "{:.2f}", "preservation": "{:.4f}",
                   "edit_strength": "{:.4f}", "preservation_lpips": "{:.3f}", "edit_strength_lpips": "{:.3f}"}
METRIC_TITLES = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "psnr_y": "PSNR-Y (dB) ↑", "ssim_y": "SSIM-Y ↑",
                  "l1": "L1 ↓", "l2": "L2 ↓", "lpips": "LPIPS ↓", "clip_image": "CLIP image sim. (input) ↑",
                  "clip_dir": "CLIP direction ↑", "clip_t": "CLIP-T ↑", "clip_i": "CLIP-I (ground truth) ↑",
                  "dino": "DINO (ground truth) ↑", "identity_rate": "identity rate ↓",
                  "preservation": "L1 outside edit mask ↓", "edit_strength": "L1 inside edit mask (vs input)",
                  "preservation_lpips": "LPIPS outside edit mask ↓", "edit_strength_lpips": "LPIPS inside edit mask"}


def format_metric(key: str, value: float) -> str:
    """``value`` with the digits reports show for metric ``key`` (4 significant digits if unknown)."""
    return METRIC_FORMATS.get(key, "{:.4g}").format(value)


# ----------------------------------------------------------------------------
# Summary: mean and 95% percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13),
# resampling whole photos (clusters), not crops (issue 12)
#
# Crops of one photo share its content and so its difficulty: their scores are correlated,
# and resampling crops as if independent gives intervals that are too narrow (the quickstart's
# 16 examples are crops of 2 photos). The cluster bootstrap (Davison & Hinkley 1997, sec. 3.8;
# Field & Welsh 2007) draws photos with replacement and pools all their crops; the mean of a
# resample is sum(scores of drawn photos) / count(crops of drawn photos).


def _bootstrap(values: np.ndarray, clusters: Sequence[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles of the cluster-resampled means, per column of `values` (n x k).

    ``clusters[i]`` names the photo (or scene) of row i. With every row its own cluster this is
    the ordinary bootstrap, draw for draw. A single cluster has no spread to resample: its
    interval is the mean itself.
    """
    first: dict[Any, int] = {}  # cluster -> index, in order of first appearance
    inverse = np.asarray([first.setdefault(c, len(first)) for c in clusters])
    g = len(first)
    sums = np.zeros((g, values.shape[1]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=g).astype(np.float64)
    if g == 1:
        mean = sums[0] / counts[0]
        return mean, mean
    # Columns share the resampled photos: each resample is one set of photos, scored by all metrics.
    idx = rng.integers(0, g, size=(BOOTSTRAP_RESAMPLES, g))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)[:, None]  # (resamples, k)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return lo, hi


def summarize(
    rows: list[dict[str, Any]],
    group_key: str = "task",
    metric_keys: Sequence[str] = ("psnr", "ssim"),
    cluster_key: str = "source",
) -> list[dict[str, Any]]:
    """Per (group, method): n, n_groups, mean and 95% cluster-bootstrap interval of each metric.

    `rows` are per-example scores such as {"task": "denoise", "method": "model", "source":
    "photo-3", "psnr": 21.3, "ssim": 0.71}. ``cluster_key`` names the photo (or scene) a row
    was cropped from; the bootstrap resamples those, and ``n_groups`` says how many distinct
    ones an interval rests on. A row without it is its own cluster (n_groups == n).
    Besides one row per (group, method), each method gets a row whose group is "all", pooling
    its examples across groups. Output rows look like {"task": "denoise", "method": "model",
    "n": 4, "n_groups": 2, "psnr": 21.3, "psnr_lo": 20.1, "psnr_hi": 22.0, "ssim": ...},
    sorted by group then method, with the "all" rows last.

    Each interval uses its own generator seeded with `BOOTSTRAP_SEED`, so a group's interval
    does not depend on which other groups are in the table.
    """
    groups: dict[tuple[str, str], list[list[float]]] = {}
    clusters: dict[tuple[str, str], list[Any]] = {}
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
        cluster = (1, row[cluster_key]) if row.get(cluster_key) not in (None, "") else (0, i)  # no photo: its own cluster
        for key in ((group, method), (ALL_TASKS, method)):
            groups.setdefault(key, []).append(values)
            clusters.setdefault(key, []).append(cluster)

    order = sorted(groups, key=lambda gm: (gm[0] == ALL_TASKS, gm[0], gm[1]))
    out = []
    for group, method in order:
        values = np.asarray(groups[group, method], dtype=np.float64)
        lo, hi = _bootstrap(values, clusters[group, method], np.random.default_rng(BOOTSTRAP_SEED))
        summary: dict[str, Any] = {group_key: group, "method": method, "n": len(values),
                                   "n_groups": len(set(clusters[group, method]))}
        for j, key in enumerate(metric_keys):
            summary[key] = float(values[:, j].mean())
            summary[f"{key}_lo"] = float(lo[j])
            summary[f"{key}_hi"] = float(hi[j])
        out.append(summary)
    return out
