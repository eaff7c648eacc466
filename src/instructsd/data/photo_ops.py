"""Photo operations: Lightroom-style slider moves as exact, instruction-driven edits (issue 15).

Every operation is a pure function ``fn(rgb, params) -> rgb`` on ``uint8 H x W x 3`` arrays
(a PIL image is accepted too), so the edited image is exact ground truth and the amount an
instruction asks for can be scored (:mod:`instructsd.eval.amount`). Each row of a dataset
records what was done in an ``edit_params`` column, e.g. ``{"op": "exposure", "ev": 1.0}``;
a compound edit records a list of those, in the order applied.

Colour spaces. Operations that mimic light (exposure, white balance, vignette) work in
*linear light*: the IEC 61966-2-1 sRGB transfer function is decoded exactly, the edit is a
gain, and the result is clipped to [0, 1] and encoded back::

    linear(c) = c / 12.92                      if c <= 0.04045
              = ((c + 0.055) / 1.055) ** 2.4   otherwise
    srgb(l)   = 12.92 * l                      if l <= 0.0031308
              = 1.055 * l ** (1 / 2.4) - 0.055 otherwise
    exposure: edited = round(255 * srgb(clip(linear(input / 255) * 2 ** ev, 0, 1)))

Tone and colour operations work on the encoded values, as a slider on an 8-bit photo does; luma is
BT.601 (PIL's ``convert("L")`` weights). Amounts come from fixed *levels* with their words ("by one
stop", "slightly"), so an instruction states the edit exactly (:mod:`instructsd.data.photo_instructions`).
Where an operation has an inverse, :func:`instructsd.data.photo_pairs.inverse_pair` keeps a pair only when the inverse restores the
original within :data:`INVERSE_TOLERANCE` levels (clipping loses highlights). docs/data.md has the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from instructsd.errors import InstructSDError

OpFn = Callable[[np.ndarray, Mapping], np.ndarray]
LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights (sum to 1, as PIL's ``convert("L")``)."""
INVERSE_TOLERANCE = 3.0
"""Largest 99th-percentile |error| (0-255 levels) an inverse pair may have; see module doc."""
COMPOUND_SEP = "+"
"""Joins op names of a compound edit, in the order applied (as for compound tasks)."""


# --- sRGB transfer function (IEC 61966-2-1) -----------------------------------------------

def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Encoded sRGB in [0, 1] -> linear light in [0, 1], IEC 61966-2-1's exact piecewise curve."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> encoded sRGB in [0, 1], the inverse of :func:`srgb_to_linear`."""
    lin = np.asarray(lin, dtype=np.float64)
    return np.where(lin <= 0.0031308, 12.92 * lin,
                    1.055 * np.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055)


def as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """A ``uint8 H x W x 3`` array from an array or a PIL image (converted to RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise InstructSDError("photo operations take a uint8 H x W x 3 RGB array or a PIL image; "
                              f"got {getattr(image, 'dtype', type(image))} "
                              f"{getattr(image, 'shape', '')}")
    return image


def _unit(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, clipped and rounded to nearest (the 8-bit rounding of the spec)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def luma(x: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``H x W x 3`` values, same scale as ``x``."""
    return x @ LUMA


# --- the operations ---------------------------------------------------------------------------
# Each is ``(rgb uint8, params) -> rgb uint8`` and pure; parameters are documented on the op.

def exposure(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``srgb(clip(linear(x) * 2**ev))``: ``ev`` stops of exposure, in linear light."""
    lin = srgb_to_linear(_unit(rgb)) * 2.0 ** p["ev"]
    return _to_uint8(linear_to_srgb(np.clip(lin, 0.0, 1.0)))


def contrast(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``0.5 + factor * (x - 0.5)`` on encoded values: a straight tone curve pivoting at mid-grey."""
    return _to_uint8(0.5 + p["factor"] * (_unit(rgb) - 0.5))


def saturation(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``Y + factor * (x - Y)``: chroma scaled about each pixel's luma ``Y`` (luma unchanged)."""
    x = _unit(rgb)
    y = luma(x)[..., None]
    return _to_uint8(y + p["factor"] * (x - y))


def vibrance(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Saturation scaled by ``1 + amount * (1 - s)``, ``s = max - min``: dull colours move most.

    Already vivid colours (and skin, which is moderately saturated) change less than with
    :func:`saturation`, which is what a vibrance slider is for.
    """
    x = _unit(rgb)
    y = luma(x)[..., None]
    s = (x.max(axis=-1) - x.min(axis=-1))[..., None]
    return _to_uint8(y + (1.0 + p["amount"] * (1.0 - s)) * (x - y))


def _gains(rgb: np.ndarray, gains: Sequence[float]) -> np.ndarray:
    lin = srgb_to_linear(_unit(rgb)) * np.asarray(gains)
    return _to_uint8(linear_to_srgb(np.clip(lin, 0.0, 1.0)))


def temperature(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Linear-light gains ``R * 2**(shift/2)``, ``B * 2**(-shift/2)``: ``shift`` > 0 is warmer.

    ``shift`` is the change of log2(R / B) in stops, the axis a white-balance temperature
    slider moves along (blue <-> amber).
    """
    t = p["shift"]
    return _gains(rgb, (2.0 ** (t / 2), 1.0, 2.0 ** (-t / 2)))


def tint(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Linear-light gains ``R, B * 2**(shift/2)``, ``G * 2**(-shift/2)``: ``shift`` > 0 is magenta.

    The green <-> magenta axis of a white-balance tint slider, orthogonal to
    :func:`temperature` (it leaves log2(R / B) alone).
    """
    m = p["shift"]
    return _gains(rgb, (2.0 ** (m / 2), 2.0 ** (-m / 2), 2.0 ** (m / 2)))


def highlight_weight(y: np.ndarray) -> np.ndarray:
    """``27/4 * Y^2 (1 - Y)``: 0 at black and white, peak 1 at Y = 2/3."""
    return 6.75 * y * y * (1.0 - y)


def shadow_weight(y: np.ndarray) -> np.ndarray:
    """``27/4 * Y (1 - Y)^2``: 0 at black and white, peak 1 at Y = 1/3."""
    return 6.75 * y * (1.0 - y) ** 2


def _tone(rgb: np.ndarray, amount: float, weight: Callable) -> np.ndarray:
    # Adding the same luma shift to R, G, B moves Y by exactly that shift (the weights sum
    # to 1) and keeps hue; |amount| < 4/27 keeps the curve Y + amount * w(Y) monotonic.
    x = _unit(rgb)
    return _to_uint8(x + (amount * weight(luma(x)))[..., None])


def highlights(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``x + amount * w_h(Y)`` (:func:`highlight_weight`): brightens (> 0) or recovers bright tones."""
    return _tone(rgb, p["amount"], highlight_weight)


def shadows(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``x + amount * w_s(Y)`` (:func:`shadow_weight`): lifts (> 0) or deepens dark tones."""
    return _tone(rgb, p["amount"], shadow_weight)


def black_and_white(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Every channel set to the BT.601 luma: a neutral black-and-white conversion."""
    y = luma(_unit(rgb))[..., None]
    return _to_uint8(np.repeat(y, 3, axis=-1))


SEPIA = np.array([[0.393, 0.769, 0.189],
                  [0.349, 0.686, 0.168],
                  [0.272, 0.534, 0.131]])
"""The common sepia-tone matrix (rows: output R, G, B); its rows sum to 1.351, 1.203, 0.937."""


def sepia(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``clip(SEPIA @ rgb)`` per pixel: a warm brown monochrome print look."""
    return _to_uint8(_unit(rgb) @ SEPIA.T)


def radius2(h: int, w: int) -> np.ndarray:
    """Squared distance from the centre, 1 at the corners (``H x W``)."""
    yy = (np.arange(h) + 0.5 - h / 2) / (h / 2)
    xx = (np.arange(w) + 0.5 - w / 2) / (w / 2)
    return (yy[:, None] ** 2 + xx[None, :] ** 2) / 2.0


def vignette(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Linear light times ``1 - strength * r^2`` (``r`` = 1 at the corners): darkened edges."""
    gain = 1.0 - p["strength"] * radius2(*rgb.shape[:2])
    lin = srgb_to_linear(_unit(rgb)) * gain[..., None]
    return _to_uint8(linear_to_srgb(np.clip(lin, 0.0, 1.0)))


def grain(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``x + N(0, sigma^2)`` in 0-255 levels, the same value on R, G, B (monochrome film grain).

    The noise comes from ``params["seed"]``, so the op stays a pure function of its params.
    """
    noise = np.random.default_rng(p["seed"]).normal(0.0, p["sigma"] / 255.0, rgb.shape[:2])
    return _to_uint8(_unit(rgb) + noise[..., None])


SHARPEN_SIGMA = 1.0
"""Gaussian radius (pixels) of the unsharp mask."""


def blur(x: np.ndarray) -> np.ndarray:
    """The Gaussian blur the unsharp mask subtracts (sigma :data:`SHARPEN_SIGMA`, reflected edges)."""
    return cv2.GaussianBlur(x, (0, 0), SHARPEN_SIGMA, borderType=cv2.BORDER_REFLECT_101)


def sharpen(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Unsharp mask ``x + amount * (x - blur(x))``."""
    x = _unit(rgb)
    return _to_uint8(x + p["amount"] * (x - blur(x)))


def hue_matrix(degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` about the grey axis (1, 1, 1) of RGB (Rodrigues' formula).

    +120 degrees maps red to green and green to blue, so positive angles turn hues the way
    HSV hue increases (red -> yellow -> green -> blue); greys are fixed.
    """
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    k = np.ones((3, 3)) / 3.0
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)
    return c * np.eye(3) + s * cross + (1 - c) * k


def hue(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Hue rotated by ``degrees`` about the grey axis (:func:`hue_matrix`), on encoded values."""
    return _to_uint8(_unit(rgb) @ hue_matrix(p["degrees"]).T)


def gamma(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """``x ** gamma`` on encoded values: ``gamma`` < 1 brightens the midtones, > 1 darkens."""
    return _to_uint8(_unit(rgb) ** p["gamma"])


def flip(rgb: np.ndarray, p: Mapping) -> np.ndarray:
    """Mirror left-right (its own inverse)."""
    return np.ascontiguousarray(rgb[:, ::-1])


# --- registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One sampled amount: its parameter value and the words that state it."""

    value: float
    """Parameter value for the positive direction (the negative one is derived, see PhotoOp)."""
    words: tuple[str, ...]
    """Phrases that fill ``{amount}``; one is drawn per instruction."""


ADVERBS = (
    Level(1.0, ("slightly", "a little", "a bit")),
    Level(2.0, ("noticeably", "quite a bit")),
    Level(3.0, ("a lot", "considerably", "dramatically")),
)
"""Degree words for ops without physical units; each op puts its own values on them.

Every phrase reads both after a verb ("boost the contrast a lot") and before a comparative
("make it a lot warmer"), so bank templates can use either position."""


def _adverbs(*values: float) -> tuple[Level, ...]:
    return tuple(Level(v, a.words) for v, a in zip(values, ADVERBS, strict=True))


@dataclass(frozen=True)
class PhotoOp:
    """One photo operation: its function, parameters, amount and instruction slots."""

    name: str
    """Identifier: the ``op`` in ``edit_params``, the bank ``banks/<name>.yaml``."""
    fn: OpFn
    """``(rgb uint8, params) -> rgb uint8``, pure."""
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Parameter -> (low, high) that :func:`apply` accepts (the sampled levels lie inside)."""
    amount: str | None = None
    """The scalar parameter an instruction states, or None (flip, black-and-white, sepia)."""
    levels: tuple[Level, ...] = ()
    """Sampled amounts, smallest first, with their words."""
    signed: str | None = None
    """How the negative direction is made from a level's value: ``"neg"`` (``-v``),
    ``"inv"`` (``1 / v``), or None if the op goes one way only."""
    directions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Bank slot -> (word for the positive direction, word for the negative one)."""
    invertible: bool = False
    """Whether :meth:`inverse` exists (up to clipping and 8-bit rounding)."""
    extra: Callable[[np.random.Generator], dict] | None = None
    """Draws parameters that are not the amount (the grain's noise seed)."""

    def signed_value(self, value: float, negative: bool) -> float:
        if not negative:
            return value
        return -value if self.signed == "neg" else 1.0 / value

    def inverse(self, params: Mapping) -> dict:
        """The parameters that undo ``params`` (before clipping and rounding)."""
        if not self.invertible:
            raise InstructSDError(f"photo op {self.name!r} has no inverse; invertible ops: "
                                  + ", ".join(n for n, o in OPS.items() if o.invertible))
        out = dict(params)
        if self.amount is not None:
            v = params[self.amount]
            out[self.amount] = -v if self.signed == "neg" else 1.0 / v
        return out

    def level_of(self, params: Mapping) -> tuple[Level, bool]:
        """``(level, negative)`` whose signed value is ``params[amount]``."""
        v = params[self.amount]
        for level in self.levels:
            for negative in ((False, True) if self.signed else (False,)):
                if np.isclose(self.signed_value(level.value, negative), v, rtol=1e-9, atol=1e-12):
                    return level, negative
        raise InstructSDError(
            f"photo op {self.name!r}: {self.amount}={v} is not one of its levels "
            f"({', '.join(str(lv.value) for lv in self.levels)}), so no instruction states it; "
            "draw params with sample_edit")


OPS: dict[str, PhotoOp] = {op.name: op for op in (
    PhotoOp("exposure", exposure, {"ev": (-3.0, 3.0)}, amount="ev", signed="neg", invertible=True,
            levels=(Level(1 / 3, ("a third of a stop",)),
                    Level(0.5, ("half a stop",)),
                    Level(1.0, ("one stop", "a stop", "a full stop")),
                    Level(1.5, ("a stop and a half", "one and a half stops")),
                    Level(2.0, ("two stops",))),
            directions={"increase": ("increase", "decrease"), "raise": ("raise", "lower"),
                        "brighter": ("brighter", "darker"), "brighten": ("brighten", "darken"),
                        "up": ("up", "down"), "over": ("overexpose", "underexpose"),
                        "more": ("more", "less"), "add": ("add", "take away"),
                        "boost": ("boost", "reduce")}),
    PhotoOp("contrast", contrast, {"factor": (0.25, 4.0)}, amount="factor", signed="inv",
            invertible=True, levels=_adverbs(1.15, 1.35, 1.7),
            directions={"increase": ("increase", "decrease"), "more": ("more", "less"),
                        "raise": ("raise", "lower"), "boost": ("boost", "reduce"),
                        "punchier": ("punchier", "flatter"), "up": ("up", "down"),
                        "higher": ("higher", "lower"), "stronger": ("stronger", "weaker"),
                        "harder": ("harder", "softer")}),
    PhotoOp("saturation", saturation, {"factor": (0.0, 4.0)}, amount="factor", signed="inv",
            invertible=True, levels=_adverbs(1.2, 1.5, 2.0),
            directions={"increase": ("increase", "decrease"), "more": ("more", "less"),
                        "boost": ("boost", "reduce"), "raise": ("raise", "lower"),
                        "stronger": ("stronger", "weaker"), "richer": ("richer", "duller"),
                        "up": ("up", "down"), "vivid": ("more vivid", "less vivid"),
                        "colourful": ("more colourful", "less colourful"),
                        "saturate": ("saturate", "desaturate")}),
    PhotoOp("vibrance", vibrance, {"amount": (-1.0, 2.0)}, amount="amount", signed="neg",
            levels=_adverbs(0.25, 0.5, 1.0),
            directions={"increase": ("increase", "decrease"), "more": ("more", "less"),
                        "boost": ("boost", "reduce"), "raise": ("raise", "lower"),
                        "up": ("up", "down"), "vibrant": ("more vibrant", "less vibrant"),
                        "livelier": ("livelier", "more muted"), "higher": ("higher", "lower")}),
    PhotoOp("temperature", temperature, {"shift": (-2.0, 2.0)}, amount="shift", signed="neg",
            invertible=True, levels=_adverbs(0.15, 0.3, 0.6),
            directions={"warmer": ("warmer", "cooler"), "warmup": ("warm up", "cool down"),
                        "warmth": ("more warmth", "less warmth"),
                        "toward": ("towards amber", "towards blue"),
                        "orange": ("more orange", "more blue"),
                        "warm": ("a warm", "a cool")}),
    PhotoOp("tint", tint, {"shift": (-2.0, 2.0)}, amount="shift", signed="neg",
            invertible=True, levels=_adverbs(0.1, 0.2, 0.4),
            directions={"magenta": ("magenta", "green"), "pinker": ("pinker", "greener"),
                        "toward": ("towards magenta", "towards green"),
                        "more": ("more magenta", "more green")}),
    PhotoOp("highlights", highlights, {"amount": (-0.14, 0.14)}, amount="amount", signed="neg",
            levels=_adverbs(0.04, 0.08, 0.13),
            directions={"brighten": ("brighten", "darken"), "brighter": ("brighter", "darker"),
                        "raise": ("raise", "lower"), "increase": ("increase", "decrease"),
                        "boost": ("boost", "tone down"), "up": ("up", "down")}),
    PhotoOp("shadows", shadows, {"amount": (-0.14, 0.14)}, amount="amount", signed="neg",
            levels=_adverbs(0.04, 0.08, 0.13),
            directions={"lift": ("lift", "deepen"), "brighten": ("brighten", "darken"),
                        "brighter": ("brighter", "darker"), "raise": ("raise", "lower"),
                        "open": ("open up", "crush"), "lighter": ("lighter", "deeper"),
                        "up": ("up", "down")}),
    PhotoOp("black_and_white", black_and_white),
    PhotoOp("sepia", sepia),
    PhotoOp("vignette", vignette, {"strength": (0.0, 0.9)}, amount="strength",
            levels=_adverbs(0.25, 0.45, 0.7)),
    PhotoOp("grain", grain, {"sigma": (0.0, 30.0), "seed": (0, 2**31 - 1)}, amount="sigma",
            levels=_adverbs(4.0, 8.0, 14.0),
            extra=lambda rng: {"seed": int(rng.integers(2**31 - 1))}),
    PhotoOp("sharpen", sharpen, {"amount": (0.0, 4.0)}, amount="amount",
            levels=_adverbs(0.5, 1.0, 2.0)),
    PhotoOp("hue", hue, {"degrees": (-180.0, 180.0)}, amount="degrees", signed="neg",
            invertible=True,
            levels=(Level(15.0, ("15 degrees", "fifteen degrees")),
                    Level(30.0, ("30 degrees", "thirty degrees")),
                    Level(60.0, ("60 degrees", "sixty degrees")),
                    Level(90.0, ("90 degrees", "ninety degrees", "a quarter turn"))),
            directions={"forward": ("forward", "backward"),
                        "forwards": ("forwards", "backwards")}),
    PhotoOp("gamma", gamma, {"gamma": (0.25, 4.0)}, amount="gamma", signed="inv",
            invertible=True, levels=_adverbs(0.8, 0.65, 0.5),
            directions={"brighter": ("brighter", "darker"), "brighten": ("brighten", "darken"),
                        "lift": ("lift", "lower"), "raise": ("raise", "lower"),
                        "lighter": ("lighter", "deeper"), "higher": ("higher", "lower")}),
    PhotoOp("flip", flip, invertible=True),
)}
"""Every photo operation by name. Gamma's levels are < 1 for the positive (brighter) way."""


COLOUR_OPS = frozenset({"saturation", "vibrance", "hue", "black_and_white"})
"""Ops that leave a grayscale image unchanged (a builder skips grayscale photos for them: the pair
would teach "do nothing" under an instruction that asks for a change)."""


def is_grayscale(rgb: np.ndarray, tolerance: int = 2) -> bool:
    """Whether every pixel's channels agree within ``tolerance`` levels (a gray photo stored as RGB)."""
    rgb = as_rgb(rgb).astype(np.int16)
    return int(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max(initial=0)) <= tolerance


def get_op(name: str) -> PhotoOp:
    """The op called ``name``; an unknown name lists the known ones."""
    if name not in OPS:
        raise InstructSDError(f"unknown photo op {name!r}; photo ops: {', '.join(OPS)}")
    return OPS[name]


# --- sampling and applying ------------------------------------------------------------------

def sample_edit(op: str, rng: np.random.Generator) -> dict:
    """Draw ``{"op": op, <amount>: value, ...}``: a level (uniform) and, if signed, a direction."""
    o = get_op(op)
    params: dict = {"op": o.name}
    if o.amount is not None:
        level = o.levels[int(rng.integers(len(o.levels)))]
        negative = bool(o.signed) and bool(rng.integers(2))
        params[o.amount] = float(o.signed_value(level.value, negative))
    if o.extra is not None:
        params.update(o.extra(rng))
    return params


def _check_params(o: PhotoOp, params: Mapping) -> None:
    if params.get("op", o.name) != o.name:
        raise InstructSDError(f"edit_params for op {params['op']!r} passed to op {o.name!r}")
    missing = set(o.ranges) - set(params)
    unknown = set(params) - set(o.ranges) - {"op"}
    if missing or unknown:
        raise InstructSDError(f"photo op {o.name!r}: parameters must be exactly "
                              f"{sorted(o.ranges) or 'none'}; got {sorted(set(params) - {'op'})}")
    for key, (lo, hi) in o.ranges.items():
        if not lo <= params[key] <= hi:
            raise InstructSDError(f"photo op {o.name!r}: {key}={params[key]} is outside "
                                  f"[{lo}, {hi}]")


def apply(op: str, image: np.ndarray | Image.Image, params: Mapping) -> np.ndarray:
    """Apply ``op`` with ``params`` (checked against its ranges) -> ``uint8 H x W x 3``."""
    o = get_op(op)
    _check_params(o, params)
    return o.fn(as_rgb(image), params)


def apply_edits(image: np.ndarray | Image.Image,
                edit_params: Mapping | Sequence[Mapping]) -> np.ndarray:
    """Apply one ``edit_params`` dict, or a list of them in order (a compound edit)."""
    edits = [edit_params] if isinstance(edit_params, Mapping) else list(edit_params)
    out = as_rgb(image)
    for params in edits:
        out = apply(params["op"], out, params)
    return out


def edit_params_json(edit_params: Mapping | Sequence[Mapping]) -> str:
    """The ``edit_params`` column value: JSON, ``op`` first (a list for a compound edit)."""
    def one(p: Mapping) -> dict:
        return {"op": p["op"], **{k: v for k, v in p.items() if k != "op"}}
    if isinstance(edit_params, Mapping):
        return json.dumps(one(edit_params))
    return json.dumps([one(p) for p in edit_params])


def parse_edit_params(text: str | Mapping | Sequence) -> list[dict]:
    """An ``edit_params`` value (JSON text or already parsed) as a list of dicts."""
    value = json.loads(text) if isinstance(text, str) else text
    edits = [value] if isinstance(value, Mapping) else list(value)
    for p in edits:
        if not isinstance(p, Mapping) or "op" not in p:
            raise InstructSDError(f"edit_params entry {p!r} has no 'op' key")
        get_op(p["op"])
    return [dict(p) for p in edits]
