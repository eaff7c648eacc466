"""Edit tasks: a registry of names over the degradation catalogue and the teachers.

A task says how to make an (input, instruction, edited) triple from one clean photo, in one
of three ways (issue 13: the code lives in :mod:`~instructsd.data.degradations`,
:mod:`~instructsd.data.teachers` and :mod:`~instructsd.data.photo_ops`; this module only names it):

- a *degradation* spec: the input is the photo degraded, the target the clean photo
  (denoise, lowlight, deblur, derain, dehaze, jpeg, whitebalance);
- a *teacher*: the input is the photo, the target the teacher's output (``cartoonize``: a
  classical OpenCV filter, the trick InstructPix2Pix plays with Prompt-to-Prompt, with a
  cheap deterministic teacher instead);
- a *photo operation* (issue 15, "an instruction-driven Lightroom"): the input is the photo, the
  target the operation applied with sampled parameters (``exposure``, ``contrast``, ... and
  ``photo_compound``: two operations in a row). The parameters go to the row's ``edit_params``
  column (JSON) and the instruction states them ("Increase the exposure by one stop."), so
  :func:`row_instruction` needs them; the other tasks' instructions depend on the task alone.

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
from instructsd.data.instructions import canonical_instruction, get_bank, sample_instruction
from instructsd.data.photo_instructions import (
    all_op_instructions,
    canonical_instruction_for_edit,
    instruction_for_edit,
)
from instructsd.data.photo_ops import COLOUR_OPS, OPS, apply_edits, edit_params_json, parse_edit_params, sample_edit
from instructsd.data.photo_pairs import sample_compound
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
    photo_op: str | None = None
    """Or: a photo operation of :data:`~instructsd.data.photo_ops.OPS`, or ``"compound"`` (two of them)."""

    def __post_init__(self) -> None:
        if not self.instructions:
            raise ValueError(f"task {self.name!r} needs at least one instruction")
        if sum(x is not None for x in (self.degradation, self.teacher, self.photo_op)) != 1:
            raise ValueError(f"task {self.name!r} needs exactly one of a degradation, a teacher or a photo op")

    @property
    def invertible(self) -> bool:
        """A photo op whose inverse exists (:meth:`instructsd.data.photo_ops.PhotoOp.inverse`)."""
        return self.photo_op in OPS and OPS[self.photo_op].invertible

    @property
    def needs_colour(self) -> bool:
        """A colour operation leaves a grayscale photo unchanged: the builder skips such photos."""
        return self.photo_op in COLOUR_OPS

    @property
    def canonical(self) -> str:
        """The instruction used when a single, fixed prompt is wanted."""
        return self.instructions[0]

    def apply(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(clean uint8 HxWx3, rng) -> (input uint8, target uint8)``, pure apart from ``rng``."""
        return self.make(clean, rng)[:2]

    def make(self, clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """``(input, target, edit_params)``: ``edit_params`` is the photo op's JSON, "" for other tasks."""
        if self.photo_op is not None:
            params = sample_compound(rng) if self.photo_op == "compound" else sample_edit(self.photo_op, rng)
            return clean.copy(), apply_edits(clean, params), edit_params_json(params)
        if self.teacher is not None:
            return clean.copy(), load_teacher(self.teacher)(clean, rng), ""
        degraded, _, _ = degrade(clean, [self.degradation], rng)
        return degraded, clean.copy(), ""


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
# Photo operations come after, so the legacy seed words of the tasks above never move.
PHOTO_TASKS: tuple[str, ...] = (*OPS, "photo_compound")


def _op_instructions(op: str) -> tuple[str, ...]:
    """Every training wording of ``op`` at every amount, canonical (its first level, positive way) first:
    what the tiny tokenizer learns from; a row's own instruction comes from :func:`row_instruction`."""
    canonical = canonical_instruction_for_edit({"op": op, **({OPS[op].amount: OPS[op].levels[0].value}
                                                              if OPS[op].amount else {})})
    return (canonical, *sorted(all_op_instructions(op) - {canonical}))


TASKS.update({op: Task(op, _op_instructions(op), photo_op=op) for op in OPS})
TASKS["photo_compound"] = Task("photo_compound", (instruction_for_edit(
    "exposure+temperature", [{"op": "exposure", "ev": 1.0}, {"op": "temperature", "shift": 0.3}],
    np.random.default_rng(0)),), photo_op="compound")


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise InstructSDError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}") from None


def is_photo_task(name: str) -> bool:
    return name in TASKS and TASKS[name].photo_op is not None


def _edits(task: str, edit_params: str | None) -> list[dict]:
    if not edit_params:
        raise InstructSDError(f"a {task!r} row needs its edit_params (the photo op and its amount) to word its "
                              "instruction; the dataset has none: rebuild it with this version of instructsd")
    return parse_edit_params(edit_params)


def row_instruction(task: str, edit_params: str | None, rng: np.random.Generator, *, held_out: bool = False) -> str:
    """An instruction for a row: a photo op's states the row's own amount (from ``edit_params``), every
    other task's is a paraphrase from its bank (``held_out``: only wordings never trained on)."""
    if is_photo_task(task):
        edits = _edits(task, edit_params)
        names = "+".join(p["op"] for p in edits)
        return instruction_for_edit(names, edits[0] if len(edits) == 1 else edits, rng, held_out=held_out)
    return sample_instruction(task, rng, held_out=held_out)


def edit_class(task: str, edit_params: str | None = None) -> str:
    """What a row's instruction asks for, as a label: the task, and for a photo operation the amount each
    edit states ("exposure|exposure=1.0"): "one stop brighter" and "two stops darker" are different edits.
    Parameters that are not an amount (grain's noise seed) are left out: no wording states them."""
    if not is_photo_task(task):
        return task
    amounts = [f"{p['op']}={p[OPS[p['op']].amount]}" if OPS[p["op"]].amount else p["op"] for p in _edits(task, edit_params)]
    return f"{task}|{','.join(amounts)}"


def canonical_row_instruction(task: str, edit_params: str | None = None) -> str:
    """The fixed wording of a row's edit: the bank's canonical template (for a photo op, filled with the row's amount)."""
    if is_photo_task(task):
        edits = _edits(task, edit_params)
        if len(edits) == 1:
            return canonical_instruction_for_edit(edits[0])
        # A compound edit has no canonical template: a fixed draw of the shared compound wording.
        return instruction_for_edit("+".join(p["op"] for p in edits), edits, np.random.default_rng(0))
    return canonical_instruction(task)


def task_index(name: str) -> int:
    """The task's place in :data:`TASKS` (a seed word of the legacy scheme)."""
    return list(TASKS).index(get_task(name).name)
