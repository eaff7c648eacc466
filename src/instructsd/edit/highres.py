"""High-resolution editing: edit at the model's native size, restore detail at full size.

A diffusion editor trained at 256-512 px cannot edit a 2048 px photo in one pass (memory,
and the model never saw that scale). The usual workaround — downscale, edit, upscale —
throws away every detail finer than the native size. Instead we treat the low-resolution
edit as a *recipe* for a change and apply that change to the full-resolution input. Two
transfers, same signature ``(full_input, low_input, low_edited) -> full-size edit``:

``residual`` (``instructsd edit``'s default): ``full_input + upsample(low_edited - low_input)``. The change is
smooth at full scale, so upsampling it loses little; the input's fine detail passes through.

``guided``: fast guided filter (He & Sun, "Fast Guided Filter", 2015; He et al., "Guided Image
Filtering", TPAMI 2013, eqs. 7-8) applied to the *change* ``d = p - I``: per colour channel
and per local window, fit the linear model that predicts the change of the low-resolution
edit ``p`` from the low-resolution input ``I``::

    a = cov(I, d) / (var(I) + eps),    b = mean(d) - a * mean(I)          (box windows)

then average ``a``/``b`` over windows, upsample them (smooth fields) and apply them to the
full-resolution input: ``q = I_full + A * I_full + B``. Regressing the change rather than
``p`` itself means the regulariser ``eps`` pulls towards "leave the detail as it is", not
towards "flatten it": an edit that changes nothing returns the input exactly. Tone, colour and exposure changes (low-light
enhancement, white balance, stylised colour) carry over with all of the input's detail;
changes finer than the window (removing full-resolution noise) do not. See docs/editing.md.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges handled by reflection."""
    k = 2 * radius + 1
    return cv2.boxFilter(x, ddepth=-1, ksize=(k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_upsample(
    full_input: Image.Image,
    low_input: Image.Image,
    low_edited: Image.Image,
    radius: int = 1,
    eps: float = 1e-3,
) -> Image.Image:
    """Apply the change ``low_input → low_edited`` to ``full_input`` (fast guided filter).

    Args:
        full_input: the original image, at full resolution.
        low_input: ``full_input`` downscaled to the size the model edited at.
        low_edited: the model's edit of ``low_input`` (same size as ``low_input``).
        radius: window radius in *low-resolution* pixels; larger transfers smoother changes.
        eps: regularisation on [0, 1] intensities; larger pulls ``a`` towards 0 (pure offset).

    Returns:
        An RGB image of ``full_input``'s size.
    """
    if low_input.size != low_edited.size:
        raise ValueError(f"low_input {low_input.size} and low_edited {low_edited.size} differ in size")
    I = np.asarray(low_input.convert("RGB"), dtype=np.float32) / 255.0
    p = np.asarray(low_edited.convert("RGB"), dtype=np.float32) / 255.0 - I  # the change
    mean_I, mean_p = _box(I, radius), _box(p, radius)
    cov_Ip = _box(I * p, radius) - mean_I * mean_p
    var_I = _box(I * I, radius) - mean_I * mean_I
    a = cov_Ip / (var_I + eps)
    b = mean_p - a * mean_I
    mean_a, mean_b = _box(a, radius), _box(b, radius)
    W, H = full_input.size
    A = cv2.resize(mean_a, (W, H), interpolation=cv2.INTER_LINEAR)
    B = cv2.resize(mean_b, (W, H), interpolation=cv2.INTER_LINEAR)
    full = np.asarray(full_input.convert("RGB"), dtype=np.float32) / 255.0
    q = full + A * full + B
    return Image.fromarray(np.clip(np.rint(q * 255.0), 0, 255).astype(np.uint8))


def residual_upsample(full_input: Image.Image, low_input: Image.Image, low_edited: Image.Image) -> Image.Image:
    """``full_input + upsample(low_edited - low_input)``: the change, added at full size."""
    if low_input.size != low_edited.size:
        raise ValueError(f"low_input {low_input.size} and low_edited {low_edited.size} differ in size")
    delta = np.asarray(low_edited.convert("RGB"), np.float32) - np.asarray(low_input.convert("RGB"), np.float32)
    W, H = full_input.size
    # In place: at 12 MP each float32 copy is 144 MB, and this runs once per output.
    out = cv2.resize(delta, (W, H), interpolation=cv2.INTER_CUBIC)
    out += np.asarray(full_input.convert("RGB"), np.float32)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return Image.fromarray(out.astype(np.uint8))


HIGHRES_METHODS = {"residual": residual_upsample, "guided": guided_upsample}
