"""Edit-aware metrics: did the model edit where the edit belongs, and keep the rest (issue 16)?

PSNR against the ground truth cannot tell a model that stopped editing from one that edits
badly: for a subtle restoration the input itself scores well. These metrics compare the
output with its *input*, split by an automatic edit mask, and are the one definition used by
in-training validation, ``instructsd eval``/``compare`` (through ``eval.suite.MetricSuite``) and
the edit-region-weighted training loss (``train.objective``).

The edit mask of a pair (input x, ground truth y), both RGB on [0, 1]:

    M = dilate( max_c |x_c − y_c| > MASK_THRESHOLD,  a (2·MASK_DILATION_PX + 1)² square )

i.e. every pixel where some channel of the target differs from the input by more than 0.1
(≈ 25 of 255 levels: above JPEG and resampling noise), grown by 2 px so the soft edge of an
edited object counts as edited. It depends on the pair only, so it is computed once per pair.

Per output o (metric keys as in the reports; all L1 on RGB values scaled to [0, 1]):

- ``preservation``   mean |o − x| over the pixels *outside* M: how much of what should stay
                     was changed (lower is better; 0 = the rest of the input kept exactly).
- ``edit_strength``  mean |o − x| *inside* M: how strongly the model changed the region the edit
                     is about. Neither direction is "better": read it against the ground truth's
                     own edit_strength (``compare``'s ground_truth row).
- ``identity_rate``  1 when o is within the identity threshold of x, else 0; its mean over rows is
                     the share of outputs that returned their input. Within the threshold means
                     mean |o − x| over M ≤ IDENTITY_FRACTION · mean |y − x| over M: the output
                     changed the edit region by at most a fifth of what the target does. A share
                     ≥ COLLAPSE_RATE flags a collapsed model. The threshold is relative on purpose:
                     a model that returns its input through the VAE differs from it by the VAE's
                     round-trip error (≈ 0.02–0.04 L1 for Stable Diffusion's), which a fixed tiny
                     threshold would miss, while the mask's pixels differ by more than 0.1 in the
                     target. The ground truth itself is never an identity unless it equals the input.
- ``preservation_lpips`` / ``edit_strength_lpips`` (with an LPIPS model): LPIPS(x, o with M
                     replaced by x) and LPIPS(x, o outside M replaced by x): the same split, as a
                     perceptual distance of the composited output, since LPIPS scores whole images.

Empty regions: a pair whose target equals its input (M empty) has no edit region, so its
``edit_strength`` is 0 and ``identity_rate`` is judged over the whole image; a pair edited
everywhere (M full) has nothing to preserve, so its ``preservation`` is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instructsd.eval.metrics import to_array

MASK_THRESHOLD = 0.1  # per-pixel max over RGB of |input − target| on [0, 1]; 25.5 of 255, between 8-bit levels
MASK_DILATION_PX = 2  # square dilation radius in pixels
IDENTITY_FRACTION = 0.2  # an output that changed the edit region by at most this share of the target's change is an identity
COLLAPSE_RATE = 0.5  # identity_rate at or above this flags the model as collapsed (a warning and a report note)

EDIT_METRICS = ("identity_rate", "preservation", "edit_strength")
EDIT_LPIPS_METRICS = ("preservation_lpips", "edit_strength_lpips")

Distance = Callable[[Image.Image, Image.Image], float]


# ----------------------------------------------------------------------------
# The edit mask: one definition for metrics (PIL images) and the loss (pixel tensors)


def edit_mask_tensor(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The edit mask of a batch of pairs, (B, 3, H, W) on [0, 1] → bool (B, 1, H, W)."""
    diff = (source.float() - target.float()).abs().amax(dim=1, keepdim=True)
    mask = (diff > MASK_THRESHOLD).float()
    if MASK_DILATION_PX:
        side = 2 * MASK_DILATION_PX + 1
        mask = F.max_pool2d(mask, side, stride=1, padding=MASK_DILATION_PX)  # max filter = binary dilation
    return mask > 0


def _unit(image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as float64 HxWx3 on [0, 1]."""
    return to_array(image).astype(np.float64) / 255.0


def edit_mask(source: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> np.ndarray:
    """The edit mask of one pair (input, ground truth) as a bool HxW array."""
    x, y = _unit(source), _unit(target)
    if x.shape != y.shape:
        raise ValueError(f"input is {x.shape[1]}x{x.shape[0]} but target is {y.shape[1]}x{y.shape[0]} (WxH); "
                         "resize the target to the input first (eval.rows.prepare_rows does)")
    pair = [torch.from_numpy(a).permute(2, 0, 1)[None] for a in (x, y)]
    return edit_mask_tensor(*pair)[0, 0].numpy()


# ----------------------------------------------------------------------------
# Scores of one output


def region_l1(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, region: np.ndarray) -> float:
    """Mean |a − b| over the RGB values of the pixels in ``region`` (bool HxW), on [0, 1]; 0 for an empty region."""
    if not region.any():
        return 0.0
    return float(np.abs(_unit(a) - _unit(b))[region].mean())


def is_identity(output, source, target, mask: np.ndarray) -> bool:
    """Whether ``output`` is within the identity threshold of ``source`` (module docstring)."""
    region = mask if mask.any() else np.ones_like(mask)
    return region_l1(output, source, region) <= IDENTITY_FRACTION * region_l1(target, source, region)


def composite(inside: Image.Image | np.ndarray, outside: Image.Image | np.ndarray, mask: np.ndarray) -> Image.Image:
    """``inside``'s pixels where ``mask`` is set, ``outside``'s elsewhere."""
    return Image.fromarray(np.where(mask[..., None], to_array(inside), to_array(outside)))


def edit_scores(output, source, target, mask: np.ndarray, distance: Distance | None = None) -> dict[str, float]:
    """``EDIT_METRICS`` of one output (and ``EDIT_LPIPS_METRICS`` when a perceptual ``distance`` is given)."""
    scores = {"identity_rate": float(is_identity(output, source, target, mask)),
              "preservation": region_l1(output, source, ~mask),
              "edit_strength": region_l1(output, source, mask)}
    if distance is not None:
        scores["preservation_lpips"] = distance(source, composite(source, output, mask))
        scores["edit_strength_lpips"] = distance(source, composite(output, source, mask))
    return scores


def collapse_note(method: str, rate: float, where: str = "") -> str | None:
    """A one-line warning when ``rate`` (a mean identity_rate) flags ``method`` as collapsed, else None."""
    if rate < COLLAPSE_RATE:
        return None
    return (f"{method}{where} returned its input for {rate:.0%} of the rows (identity_rate {rate:.2f} >= "
            f"{COLLAPSE_RATE}): the model may have collapsed to the identity; check the image guidance, "
            "lower learning_rate or go back to an earlier checkpoint")
