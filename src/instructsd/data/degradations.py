"""Synthetic degradations: clean photo -> degraded input, for restoration pairs.

Every degradation is a small pure function ``fn(clean, params, rng) -> degraded`` on
``uint8 H x W x 3`` RGB arrays, plus the ranges its parameters are drawn from. Parameters
are drawn uniformly from those ranges with the per-sample generator, so a sample is
reproducible from its seed alone, and recorded so a dataset can say what was done.

Pixel quantities (noise std, blur size) are in pixels / 0-255 levels *of the array passed
in*, i.e. of the dataset's training resolution. Rain-streak length is a fraction of the
short side so streaks look alike at any resolution.

Degradations compose (:func:`degrade`): they are applied in the order given and the
compound task name lists their tasks in that order (``"deblur+denoise"``), from which
:func:`instructsd.data.instructions.sample_instruction` writes the compound instruction.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from instructsd.errors import InstructSDError

Range = tuple[float, float]
DegradeFn = Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    """One way of damaging a photo."""

    name: str
    """Identifier used in mixture YAML files (``degradations: [gaussian_blur, ...]``)."""
    task: str
    """The restoration task that undoes it (its instruction bank)."""
    ranges: Mapping[str, Range]
    """Parameter -> (low, high); each sample draws ``U[low, high]`` (integers: inclusive)."""
    fn: DegradeFn
    """``(clean, params, rng) -> degraded``; pure apart from ``rng``."""
    integer: frozenset[str] = field(default_factory=frozenset)
    """Parameters drawn as integers."""

    def sample_params(self, rng: np.random.Generator,
                      ranges: Mapping[str, Range] | None = None) -> dict:
        """Draw this degradation's parameters, ``ranges`` overriding the defaults."""
        merged = dict(self.ranges)
        for key, value in (ranges or {}).items():
            if key not in merged:
                raise InstructSDError(
                    f"degradation {self.name!r} has no parameter {key!r}; "
                    f"its parameters are: {', '.join(merged)}"
                )
            lo, hi = (value, value) if np.isscalar(value) else tuple(value)
            if lo > hi:
                raise InstructSDError(f"degradation {self.name!r} parameter {key!r}: "
                                      f"range [{lo}, {hi}] has low > high")
            merged[key] = (float(lo), float(hi))
        params = {}
        for key, (lo, hi) in merged.items():  # dict order: the same draws for the same ranges
            if key in self.integer:
                params[key] = int(rng.integers(int(lo), int(hi) + 1))
            else:
                params[key] = float(rng.uniform(lo, hi))
        return params

    def __call__(self, clean: np.ndarray, rng: np.random.Generator,
                 ranges: Mapping[str, Range] | None = None) -> tuple[np.ndarray, dict]:
        """Degrade ``clean``; returns ``(degraded, params)``."""
        check_rgb(clean)
        params = self.sample_params(rng, ranges)
        return self.fn(clean, params, rng), params


def check_rgb(clean: np.ndarray) -> None:
    if not (isinstance(clean, np.ndarray) and clean.dtype == np.uint8 and clean.ndim == 3
            and clean.shape[2] == 3):
        got = f"{clean.dtype} {clean.shape}" if isinstance(clean, np.ndarray) else type(clean).__name__
        raise InstructSDError(f"degradations take a uint8 H x W x 3 RGB array, got {got}")


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- noise ---------------------------------------------------------------------------------


def _gaussian_noise(clean, p, rng):
    """``clean + N(0, sigma^2)`` per pixel and channel, clipped to [0, 255]."""
    return to_uint8(clean + rng.normal(0.0, p["sigma"], size=clean.shape))


def _poisson_gaussian_noise(clean, p, rng):
    """Sensor model (Foi et al. 2008): shot noise ``Poisson(photons * x) / photons`` on
    intensities ``x`` in [0, 1], plus Gaussian read noise of std ``read_sigma`` (0-255).

    The noise variance at level ``v`` (0-255) is ``255 v / photons + read_sigma^2``: bright
    areas are noisier in absolute terms, as in real photos (SIDD).
    """
    x = clean / 255.0
    shot = rng.poisson(x * p["photons"]) / p["photons"]
    return to_uint8(255.0 * shot + rng.normal(0.0, p["read_sigma"], size=clean.shape))


# --- blur ----------------------------------------------------------------------------------


def _gaussian_blur(clean, p, rng):
    """Isotropic Gaussian blur of std ``sigma`` pixels; borders reflect."""
    return cv2.GaussianBlur(clean, (0, 0), sigmaX=p["sigma"], sigmaY=p["sigma"],
                            borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised line of ``length`` pixels at ``angle_deg`` (0 = horizontal)."""
    size = int(np.ceil(length)) | 1  # odd, so the line is centred
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = np.cos(np.deg2rad(angle_deg)), -np.sin(np.deg2rad(angle_deg))
    half = (length - 1) / 2
    for t in np.linspace(-half, half, 4 * size):  # dense samples; anti-aliased by the sum
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for xx, yy, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xx < size and 0 <= yy < size:
                kernel[yy, xx] += w
    return kernel / kernel.sum()


def _motion_blur(clean, p, rng):
    """Uniform linear camera motion: convolution with a line of ``length`` px at ``angle``."""
    return cv2.filter2D(clean, -1, motion_kernel(p["length"], p["angle"]),
                        borderType=cv2.BORDER_REFLECT_101)


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disk of ``radius`` pixels (a defocused lens' PSF)."""
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    # coverage ~ clip(radius + 0.5 - distance): soft edge one pixel wide
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32)
    return kernel / kernel.sum()


def _defocus_blur(clean, p, rng):
    """Out-of-focus blur: convolution with a disk of ``radius`` pixels."""
    return cv2.filter2D(clean, -1, disk_kernel(p["radius"]), borderType=cv2.BORDER_REFLECT_101)


# --- weather and light ---------------------------------------------------------------------


def _rain(clean, p, rng):
    """Rain streaks: random drops smeared into lines and screen-blended over the photo.

    Drops are a Bernoulli(``density``) mask per pixel, stretched by a motion kernel of
    ``length`` x short side pixels at ``angle`` degrees from vertical, scaled so a streak
    peaks near 1, and blended as ``out = clean + alpha * streak * (255 - clean)`` -- rain is
    light, it brightens and never darkens (Rain13k's synthetic sets look like this).
    """
    h, w = clean.shape[:2]
    drops = (rng.random((h, w)) < p["density"]).astype(np.float32)
    length = max(3.0, p["length"] * min(h, w))
    kernel = motion_kernel(length, 90.0 + p["angle"])
    streaks = cv2.filter2D(drops, -1, kernel * length, borderType=cv2.BORDER_CONSTANT)
    streaks = cv2.GaussianBlur(streaks, (0, 0), 0.5)
    streaks = np.clip(streaks, 0.0, 1.0)[..., None]
    return to_uint8(clean + p["alpha"] * streaks * (255.0 - clean))


def _lowlight(clean, p, rng):
    """Under-exposure: ``255 * scale * (clean / 255) ** gamma + N(0, sigma^2)``, clipped.

    Gamma > 1 sinks the shadows faster than the highlights, the scale lowers exposure, and
    the read noise is what dark photos have (LOL's low images look like this).
    """
    dark = 255.0 * p["scale"] * (clean / 255.0) ** p["gamma"]
    return to_uint8(dark + rng.normal(0.0, p["sigma"], size=clean.shape))


def _haze(clean, p, rng):
    """Atmospheric scattering model (Koschmieder; He et al. 2009):
    ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``J`` is the clean photo in [0, 1], ``A`` the grey airlight, and ``d`` a synthetic depth
    in [0, 1]: far (1) at the top of the frame, near (``1 - depth_slope``) at the bottom --
    photos rarely come with depth, and outdoor scenes recede towards the horizon.
    """
    h = clean.shape[0]
    d = 1.0 - p["depth_slope"] * np.linspace(0.0, 1.0, h)[:, None, None]
    t = np.exp(-p["beta"] * d)
    return to_uint8(255.0 * ((clean / 255.0) * t + p["airlight"] * (1.0 - t)))


def _jpeg(clean, p, rng):
    """JPEG compression at ``quality`` (Pillow, 4:2:0 chroma subsampling) and decoding."""
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=int(p["quality"]))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()


def _color_cast(clean, p, rng):
    """Wrong white balance: each channel scaled by its gain (``red``, ``green``, ``blue``), clipped.

    Gains of 0.5-1.5 span a tungsten-lit orange to a shade-blue cast; an auto-white-balance
    algorithm (or a model) has to infer and undo them from the picture alone.
    """
    gains = np.array([p["red"], p["green"], p["blue"]], dtype=np.float64)
    return to_uint8(clean * gains)


# --- registry ------------------------------------------------------------------------------

DEGRADATIONS: dict[str, Degradation] = {
    d.name: d
    for d in (
        Degradation("gaussian_noise", "denoise", {"sigma": (5.0, 50.0)}, _gaussian_noise),
        Degradation("poisson_gaussian_noise", "denoise",
                    {"photons": (10.0, 200.0), "read_sigma": (1.0, 10.0)}, _poisson_gaussian_noise),
        Degradation("gaussian_blur", "deblur", {"sigma": (0.8, 3.0)}, _gaussian_blur),
        Degradation("motion_blur", "deblur", {"length": (5.0, 15.0), "angle": (0.0, 180.0)},
                    _motion_blur),
        Degradation("defocus_blur", "deblur", {"radius": (1.5, 4.0)}, _defocus_blur),
        Degradation("rain", "derain",
                    {"density": (0.002, 0.01), "length": (0.08, 0.2), "angle": (-20.0, 20.0),
                     "alpha": (0.5, 0.9)}, _rain),
        Degradation("lowlight", "lowlight",
                    {"gamma": (1.8, 3.0), "scale": (0.35, 0.6), "sigma": (1.0, 4.0)}, _lowlight),
        Degradation("haze", "dehaze",
                    {"beta": (0.3, 1.5), "airlight": (0.7, 1.0), "depth_slope": (0.2, 0.7)}, _haze),
        Degradation("jpeg", "jpeg", {"quality": (10, 40)}, _jpeg, frozenset({"quality"})),
        Degradation("color_cast", "whitebalance", {"red": (0.5, 1.5), "green": (0.8, 1.2), "blue": (0.5, 1.5)},
                    _color_cast),
    )
}
"""Every degradation by name. Order is fixed (appending keeps old builds reproducible)."""

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "poisson_gaussian_noise"),
    "blur": ("gaussian_blur", "motion_blur", "defocus_blur"),
}
"""Names that pick one member uniformly per sample (``noise``: Gaussian or Poisson-Gaussian)."""


def get_degradation(name: str) -> Degradation:
    """The degradation called ``name``; unknown names raise an error listing the known ones."""
    try:
        return DEGRADATIONS[name]
    except KeyError:
        raise InstructSDError(
            f"unknown degradation {name!r}; choose from: {', '.join([*DEGRADATIONS, *GROUPS])}"
        ) from None


@dataclass(frozen=True)
class DegradationSpec:
    """One step of a composed degradation: a name (or group) and optional range overrides."""

    name: str
    ranges: Mapping[str, Range] = field(default_factory=dict)

    def __post_init__(self) -> None:
        members = [get_degradation(m) for m in GROUPS.get(self.name, (self.name,))]
        known = {key for m in members for key in m.ranges}
        unknown = sorted(set(self.ranges) - known)
        if unknown:
            raise InstructSDError(
                f"degradation {self.name!r} has no parameter {unknown[0]!r}; "
                f"its parameters are: {', '.join(sorted(known))}"
            )

    @property
    def task(self) -> str:
        return get_degradation(GROUPS.get(self.name, (self.name,))[0]).task


def parse_specs(items: Sequence[str | Mapping]) -> list[DegradationSpec]:
    """``["blur", {"name": "gaussian_noise", "sigma": [5, 10]}]`` -> specs (YAML form)."""
    specs = []
    for item in items:
        if isinstance(item, str):
            specs.append(DegradationSpec(item))
        elif isinstance(item, Mapping) and "name" in item:
            specs.append(DegradationSpec(item["name"], {k: v for k, v in item.items() if k != "name"}))
        else:
            raise InstructSDError(
                f"a degradation must be a name or a mapping with 'name' and parameter ranges, got {item!r}"
            )
    if not specs:
        raise InstructSDError("degradations must list at least one degradation")
    return specs


def compound_task(specs: Sequence[DegradationSpec]) -> str:
    """Task name of a composition: its tasks in order, consecutive repeats merged."""
    tasks: list[str] = []
    for spec in specs:
        if not tasks or tasks[-1] != spec.task:
            tasks.append(spec.task)
    return "+".join(tasks)


def degrade(clean: np.ndarray, specs: Sequence[DegradationSpec | str],
            rng: np.random.Generator) -> tuple[np.ndarray, str, list[dict]]:
    """Apply ``specs`` in order to ``clean``.

    Returns:
        ``(degraded, task, applied)``: the compound task name (``"deblur+denoise"``) and,
        per step, ``{"name": ..., **params}`` as drawn.
    """
    specs = [DegradationSpec(s) if isinstance(s, str) else s for s in specs]
    out, applied = clean, []
    for spec in specs:
        members = GROUPS.get(spec.name, (spec.name,))
        name = members[int(rng.integers(len(members)))] if len(members) > 1 else members[0]
        ranges = spec.ranges if len(members) == 1 else {
            k: v for k, v in spec.ranges.items() if k in get_degradation(name).ranges}
        out, params = get_degradation(name)(out, rng, ranges)
        applied.append({"name": name, **params})
    return out, compound_task(specs), applied
