"""Edit tasks: how to make an (input, instruction, edited) triple from one clean photo.

Every task shares one signature, ``apply(clean, rng) -> (input, target)``, on ``uint8``
``H x W x 3`` RGB arrays. Restoration tasks (denoise, lowlight, deblur, and derain, dehaze,
jpeg, whitebalance from :mod:`instructsd.data.degradations`) degrade the photo to
make the input and keep the clean photo as the target; ``cartoonize`` keeps the photo as the
input and uses a classical OpenCV filter as the "teacher" that makes the target -- the same
trick InstructPix2Pix uses with Prompt-to-Prompt, with a cheap deterministic teacher instead.

All randomness comes from the ``rng`` passed in, so a sample is reproducible from its seed
alone (see ``build.py``, which derives one generator per sample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from instructsd.data.degradations import DEGRADATIONS
from instructsd.data.degradations import check_rgb as _check_rgb
from instructsd.data.degradations import to_uint8 as _to_uint8
from instructsd.data.instructions import get_bank
from instructsd.errors import InstructSDError

TaskFn = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Task:
    """One kind of edit."""

    name: str
    """Short identifier used in configs, the CLI and the dataset's ``task`` column."""
    instructions: tuple[str, ...]
    """Ways to ask for the edit; the first is canonical (used in evaluation and the card)."""
    apply: TaskFn
    """``(clean uint8 HxWx3, rng) -> (input uint8, target uint8)``, pure apart from ``rng``."""

    def __post_init__(self) -> None:
        if not self.instructions:
            raise ValueError(f"task {self.name!r} needs at least one instruction")

    @property
    def canonical(self) -> str:
        """The instruction used when a single, fixed prompt is wanted."""
        return self.instructions[0]


def _bank_instructions(task: str) -> tuple[str, ...]:
    bank = get_bank(task)
    return (bank.canonical,) + tuple(t for t in bank.train if t != bank.canonical)


def _odd(x: float, minimum: int = 3) -> int:
    """Nearest odd integer >= ``minimum``: OpenCV's median/threshold windows must be odd."""
    k = max(minimum, int(round(x)))
    return k if k % 2 else k + 1


# --- denoise -------------------------------------------------------------------------------

DENOISE_SIGMA = (15.0, 35.0)  # std of additive Gaussian noise, 0-255 scale


def denoise(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Input: ``clean + N(0, sigma^2)`` per pixel and channel, ``sigma ~ U[15, 35]``, clipped.

    Target: ``clean``. Noise is independent per channel (colour noise, as from a sensor).
    """
    _check_rgb(clean)
    sigma = rng.uniform(*DENOISE_SIGMA)
    noisy = clean + rng.normal(0.0, sigma, size=clean.shape)
    return _to_uint8(noisy), clean.copy()


# --- lowlight ------------------------------------------------------------------------------

LOWLIGHT_GAMMA = (1.8, 3.0)  # exponent on [0, 1] intensities; > 1 crushes the shadows
LOWLIGHT_SCALE = (0.35, 0.6)  # exposure multiplier after the gamma
LOWLIGHT_NOISE_SIGMA = (1.0, 4.0)  # read noise that dark photos have, 0-255 scale


def lowlight(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Input: ``255 * scale * (clean / 255) ** gamma + N(0, sigma^2)``, clipped.

    ``gamma ~ U[1.8, 3.0]``, ``scale ~ U[0.35, 0.6]``, ``sigma ~ U[1, 4]`` (0-255 scale).
    Gamma then scale mimics an underexposed photo: shadows sink faster than highlights.
    Target: ``clean``.
    """
    _check_rgb(clean)
    gamma = rng.uniform(*LOWLIGHT_GAMMA)
    scale = rng.uniform(*LOWLIGHT_SCALE)
    sigma = rng.uniform(*LOWLIGHT_NOISE_SIGMA)
    dark = 255.0 * scale * (clean / 255.0) ** gamma
    dark += rng.normal(0.0, sigma, size=clean.shape)
    return _to_uint8(dark), clean.copy()


# --- deblur --------------------------------------------------------------------------------

DEBLUR_SIGMA = (1.0, 2.0)  # Gaussian blur std in pixels of the image as given


def deblur(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Input: ``clean`` blurred by an isotropic Gaussian, ``sigma ~ U[1, 2]`` pixels.

    Sigma is in pixels of the array passed in (the dataset's training resolution), so the
    blur is stronger, relative to the content, on small images. Borders reflect.
    Target: ``clean``.
    """
    _check_rgb(clean)
    sigma = rng.uniform(*DEBLUR_SIGMA)
    blurred = cv2.GaussianBlur(clean, (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101)
    return blurred, clean.copy()


# --- cartoonize ----------------------------------------------------------------------------

CARTOON_COLORS = 8  # palette size after quantization
CARTOON_BILATERAL_ITERS = 4
CARTOON_BILATERAL_SIGMA_COLOR = 40.0  # 0-255 scale: differences above ~40 count as edges
CARTOON_EDGE_C = 6  # adaptive-threshold offset; larger means fewer, stronger lines


def cartoon_filter(clean: np.ndarray) -> np.ndarray:
    """Classical cartoon effect; deterministic, the teacher for the ``cartoonize`` task.

    With ``s = min(H, W) / 256`` so windows scale with the image (sizes are odd, >= 3):

    1. Edge-preserving smoothing: 4 passes of ``cv2.bilateralFilter`` with diameter
       ``d = clamp(7 s, 3, 15)``, ``sigmaColor = 40``, ``sigmaSpace = d``.
    2. Colour quantization of the smoothed image to 8 colours with Pillow's median cut
       plus 3 k-means refinement passes -- an adaptive palette, no random initialisation
       (OpenCV's ``kmeans`` seeds from a global RNG), no dithering.
    3. Dark outlines: grayscale of the *smoothed* image (so fur and grass texture don't
       become lines), ``cv2.medianBlur`` with ``k = 5 s``, then
       ``cv2.adaptiveThreshold`` (mean, block ``9 s``, ``C = 6``); pixels darker than
       their neighbourhood mean minus C are painted black.

    Result: at most 9 distinct colours (8 + black). About 10 ms at 64 px, 0.5 s at 512 px.
    """
    _check_rgb(clean)
    s = min(clean.shape[:2]) / 256.0
    d = min(_odd(7 * s), 15)  # bilateral cost grows with d^2; 15 is plenty at any size
    smooth = np.ascontiguousarray(clean)
    for _ in range(CARTOON_BILATERAL_ITERS):
        smooth = cv2.bilateralFilter(smooth, d, CARTOON_BILATERAL_SIGMA_COLOR, d)
    quantized = Image.fromarray(smooth).quantize(
        colors=CARTOON_COLORS, method=Image.Quantize.MEDIANCUT, kmeans=3, dither=Image.Dither.NONE
    )
    flat = np.asarray(quantized.convert("RGB"))
    gray = cv2.medianBlur(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), _odd(5 * s))
    lines = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY,
                                  _odd(9 * s), CARTOON_EDGE_C)
    return np.where(lines[..., None] > 0, flat, 0).astype(np.uint8)


def cartoonize(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Input: ``clean``. Target: :func:`cartoon_filter` of it. ``rng`` is unused."""
    del rng  # deterministic teacher; the parameter keeps the shared task signature
    return clean.copy(), cartoon_filter(clean)


# --- derain, dehaze, jpeg, whitebalance: straight from the degradation catalogue -------------------------


def _from_degradation(name: str) -> TaskFn:
    degradation = DEGRADATIONS[name]

    def apply(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        degraded, _ = degradation(clean, rng)
        return degraded, clean.copy()

    apply.__name__ = name
    apply.__doc__ = f"Input: ``{name}`` from :mod:`instructsd.data.degradations`. Target: ``clean``."
    return apply


# --- registry ------------------------------------------------------------------------------

# Order matters: build.py seeds each sample with the task's index here, so appending new
# tasks keeps old datasets reproducible, reordering does not. Instructions are the ``train``
# paraphrases of each task's bank (``data/banks/<task>.yaml``), canonical first.
_APPLY: dict[str, TaskFn] = {
    "denoise": denoise,
    "lowlight": lowlight,
    "deblur": deblur,
    "cartoonize": cartoonize,
    "derain": _from_degradation("rain"),
    "dehaze": _from_degradation("haze"),
    "jpeg": _from_degradation("jpeg"),
    "whitebalance": _from_degradation("color_cast"),
}
TASKS: dict[str, Task] = {
    name: Task(name, _bank_instructions(name), fn) for name, fn in _APPLY.items()
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise InstructSDError(
            f"unknown task {name!r}; choose from: {', '.join(TASKS)}"
        ) from None
