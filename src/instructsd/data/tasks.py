"""Edit tasks: a registry of names over the degradation catalogue and the teachers.

A task says how to make an (input, instruction, edited) triple from one clean photo, in one
of two ways (issue 13: the code lives in :mod:`~instructsd.data.degradations` and
:mod:`~instructsd.data.teachers`, this module only names it):

- a *degradation* spec: the input is the photo degraded, the target the clean photo
  (denoise, lowlight, deblur, derain, dehaze, jpeg, whitebalance);
- a *teacher*: the input is the photo, the target the teacher's output (``cartoonize``: a
  classical OpenCV filter, the trick InstructPix2Pix plays with Prompt-to-Prompt, with a
  cheap deterministic teacher instead).

Some tasks draw from narrower ranges than the catalogue's defaults (denoise: σ 15–35 rather
than 5–50; deblur: σ 1–2 px rather than 0.8–3): the ranges the built-in tasks always had, so
datasets and the shipped tiny base built from them keep their numbers.

``Task.apply(clean, rng) -> (input, target)`` works on ``uint8 H x W x 3`` RGB arrays and draws
only from ``rng``, so a sample is reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instructsd.data.degradations import DegradationSpec, degrade
from instructsd.data.instructions import get_bank
from instructsd.data.teachers import load_teacher
from instructsd.errors import InstructSDError


@dataclass(frozen=True)
class Task:
    """One kind of edit: a degradation spec or a teacher, and its instructions."""

    name: str
    """Short identifier used in configs, the CLI and the dataset's ``task`` column."""
    instructions: tuple[str, ...]
    """Ways to ask for the edit; the first is canonical (used in evaluation and the card)."""
    degradation: DegradationSpec | None = None
    """Degrade the photo to make the input (the target is the clean photo)."""
    teacher: str | None = None
    """Or: a teacher spec (:func:`instructsd.data.teachers.load_teacher`) that makes the target."""

    def __post_init__(self) -> None:
        if not self.instructions:
            raise ValueError(f"task {self.name!r} needs at least one instruction")
        if (self.degradation is None) == (self.teacher is None):
            raise ValueError(f"task {self.name!r} needs a degradation or a teacher, not both")

    @property
    def canonical(self) -> str:
        """The instruction used when a single, fixed prompt is wanted."""
        return self.instructions[0]

    def apply(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(clean uint8 HxWx3, rng) -> (input uint8, target uint8)``, pure apart from ``rng``."""
        if self.teacher is not None:
            return clean.copy(), load_teacher(self.teacher)(clean, rng)
        degraded, _, _ = degrade(clean, [self.degradation], rng)
        return degraded, clean.copy()


def _bank_instructions(task: str) -> tuple[str, ...]:
    bank = get_bank(task)
    return (bank.canonical,) + tuple(t for t in bank.train if t != bank.canonical)


# Order matters: build_dataset's seed scheme (seed_scheme: legacy) seeds each sample with the
# task's index here, so appending new tasks keeps old datasets reproducible, reordering does
# not. Instructions are the ``train`` paraphrases of each task's bank, canonical first.
_SPECS: dict[str, dict] = {
    "denoise": {"degradation": DegradationSpec("gaussian_noise", {"sigma": (15.0, 35.0)})},
    "lowlight": {"degradation": DegradationSpec("lowlight")},
    "deblur": {"degradation": DegradationSpec("gaussian_blur", {"sigma": (1.0, 2.0)})},
    "cartoonize": {"teacher": "cartoonizer"},
    "derain": {"degradation": DegradationSpec("rain")},
    "dehaze": {"degradation": DegradationSpec("haze")},
    "jpeg": {"degradation": DegradationSpec("jpeg")},
    "whitebalance": {"degradation": DegradationSpec("color_cast")},
}
TASKS: dict[str, Task] = {name: Task(name, _bank_instructions(name), **spec) for name, spec in _SPECS.items()}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise InstructSDError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}") from None


def task_index(name: str) -> int:
    """The task's place in :data:`TASKS` (a seed word of the legacy scheme)."""
    return list(TASKS).index(get_task(name).name)
