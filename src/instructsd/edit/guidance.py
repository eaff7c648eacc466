"""Two-scale classifier-free guidance at every scale (Brooks et al. 2023, eq. 3).

InstructPix2Pix guides a noise prediction ``e(z, c_I, c_T)`` by the input image ``c_I`` and the
instruction ``c_T`` separately::

    ẽ = e(z, ∅, ∅) + s_I · (e(z, c_I, ∅) − e(z, ∅, ∅)) + s_T · (e(z, c_I, c_T) − e(z, c_I, ∅))

with image guidance ``s_I`` and text guidance ``s_T``. Stock diffusers'
``StableDiffusionInstructPix2PixPipeline`` computes exactly this, but only when its
``do_classifier_free_guidance`` is true: ``guidance_scale > 1 and image_guidance_scale >= 1``.
For any other pair it returns the conditional prediction ``e(z, c_I, c_T)`` and ignores both
scales without a word: with image guidance 0.9, text guidance 7 and 3 give the same image
(issue 11, item 7). Yet eq. 3 means something there too: ``s_I`` in (0, 1) pulls less towards the
input than the conditional model does, ``s_T`` <= 1 follows the instruction less.

So instructsd asks the stock pipeline to take its guidance branch for every pair of scales,
by calling it as a subclass whose ``do_classifier_free_guidance`` is always true
(:func:`guided_at_any_scale`). The sampler loop, the batching of the three predictions and
the formula stay diffusers' own. The one pair that keeps the stock single prediction is
``(1, 1)``, where eq. 3 reduces to ``e(z, c_I, c_T)`` exactly; pairs the stock pipeline
already guides are not touched at all, so their edits are bit-identical to a stock call.

Scales must be finite and >= 0 (:func:`check_guidance`); a negative scale, NaN or infinity is
refused with the name of the guidance.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from typing import Iterator, Literal

from instructsd.errors import InstructSDError

# The post's sampling settings: EditSettings' defaults. They live here, in a module that does
# not import diffusers, so the CLI's --help and TrainConfig can show them without loading it.
DEFAULT_STEPS = 20
DEFAULT_IMAGE_GUIDANCE = 1.5
DEFAULT_GUIDANCE = 7.0

# The samplers the edit function offers, by name, for the same reason: edit/editor.py's SCHEDULERS
# pairs them with their classes, TrainConfig's validation settings take them as a Literal.
SCHEDULER_NAMES = ("euler_ancestral", "euler", "dpmpp", "ddim", "unipc")
SchedulerChoice = Literal[("auto", *SCHEDULER_NAMES)]

GUIDANCE_RULE = "a finite number >= 0 (eq. 3 of InstructPix2Pix applies every such scale; 1 adds no extra pull)"


def guidance_problem(image_guidance: float, guidance: float,
                     names: tuple[str, str] = ("image_guidance_scale", "guidance_scale")) -> str | None:
    """Why eq. 3 cannot use these scales (naming the guidance, spelled as ``names``), or None."""
    for label, name, value in (("image guidance", names[0], image_guidance), ("text guidance", names[1], guidance)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            return f"{label} ({name}) must be {GUIDANCE_RULE}; got {value!r}"
    return None


def check_guidance(image_guidance: float, guidance: float,
                   names: tuple[str, str] = ("image_guidance_scale", "guidance_scale")) -> None:
    """Raise :class:`InstructSDError` with :func:`guidance_problem`'s message, if any."""
    problem = guidance_problem(image_guidance, guidance, names)
    if problem is not None:
        raise InstructSDError(problem)


def stock_guides(image_guidance: float, guidance: float) -> bool:
    """Whether stock ``StableDiffusionInstructPix2PixPipeline`` applies eq. 3 at these scales
    (its ``do_classifier_free_guidance``, diffusers 0.2x-0.4x)."""
    return guidance > 1.0 and image_guidance >= 1.0


def needs_forced_guidance(image_guidance: float, guidance: float) -> bool:
    """True where the stock pipeline would drop scales that eq. 3 gives a meaning."""
    return not stock_guides(image_guidance, guidance) and (image_guidance, guidance) != (1.0, 1.0)


@functools.cache
def _always_guided(cls: type) -> type:
    """``cls`` with its guidance branch always taken; same name and module, nothing else changed."""
    if not isinstance(getattr(cls, "do_classifier_free_guidance", None), property):
        # StableDiffusionXLInstructPix2PixPipeline decides guidance in a local variable of __call__.
        raise InstructSDError(
            f"{cls.__name__} has no do_classifier_free_guidance property, so instructsd cannot make it apply "
            "image and text guidance at every scale; use guidance_scale > 1 and image_guidance_scale >= 1 "
            "(where it applies eq. 3 itself), or an SD 1.x/2.x model"
        )
    return type(cls.__name__, (cls,), {
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
        "do_classifier_free_guidance": property(lambda self: True, doc="Eq. 3 at every scale (instructsd)."),
    })


@contextmanager
def guided_at_any_scale(pipe, image_guidance: float, guidance: float) -> Iterator[None]:
    """While inside, ``pipe(...)`` applies eq. 3 at these scales, whatever the stock rule says.

    Where the stock pipeline would skip guidance, ``pipe`` is an instance of a subclass of its
    own class for the duration (only ``do_classifier_free_guidance`` differs) and is given its
    class back afterwards, even on error. Callers hold the pipeline's lock
    (``editor._pipeline_lock``), so no other edit sees the switch.
    """
    check_guidance(image_guidance, guidance)
    if not needs_forced_guidance(image_guidance, guidance):
        yield
        return
    own = type(pipe)
    pipe.__class__ = _always_guided(own)
    try:
        yield
    finally:
        pipe.__class__ = own
