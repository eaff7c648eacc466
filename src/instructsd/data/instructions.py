"""Instruction banks: many ways to ask for each edit, and compound instructions built from them.

The post's open question "sample instruction paraphrases on the fly during training" needs
a bank of paraphrases per task. Each bank is a YAML file in ``data/banks/`` (one per task,
written for this project) with

- ``canonical``: the one fixed instruction (evaluation, ``instruction_policy: fixed``);
- ``train``: paraphrases used to build and train (the canonical one among them);
- ``held_out``: paraphrases never used for training, to measure whether a model generalises
  to wordings it has not seen;
- ``clauses``: lower-case verb phrases with an ``{obj}`` slot (``train`` / ``held_out``),
  used for compound instructions.

``banks/compound.yaml`` holds FLAN-style templates (Wei et al. 2022, "Finetuned Language
Models Are Zero-Shot Learners": several templates per task, some held out) that join one
clause per task in the order the degradations were applied:
``"deblur+denoise" -> "Deblur the image and denoise it."``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import yaml

from instructsd.errors import InstructSDError

BANK_TASKS: tuple[str, ...] = (
    "denoise", "lowlight", "deblur", "cartoonize", "derain", "dehaze", "jpeg", "whitebalance",
    "retouch",
)
"""Tasks with a shipped bank, in the order of :data:`instructsd.data.tasks.TASKS`, then the
tasks only paired data teaches (``retouch``: MIT-Adobe FiveK)."""

COMPOUND_SEP = "+"
"""Joins task names of a compound task, in the order the degradations were applied."""


@dataclass(frozen=True)
class InstructionBank:
    """The instructions for one task."""

    task: str
    """Task name, as in the dataset's ``task`` column."""
    train: tuple[str, ...]
    """Paraphrases used for building and training; includes :attr:`canonical`."""
    held_out: tuple[str, ...]
    """Paraphrases kept out of training, for measuring generalisation to new wordings."""
    canonical: str
    """The fixed instruction (evaluation and the ``fixed`` policy)."""
    clauses: tuple[str, ...] = ()
    """Train verb phrases with an ``{obj}`` slot, for compound instructions."""
    held_out_clauses: tuple[str, ...] = ()
    """Held-out verb phrases with an ``{obj}`` slot."""


@dataclass(frozen=True)
class _Template:
    head: str
    sep: str
    last: str
    tail: str

    def join(self, clauses: list[str]) -> str:
        text = self.head + clauses[0]
        for k, clause in enumerate(clauses[1:], start=1):
            text += (self.last if k == len(clauses) - 1 else self.sep) + clause
        text += self.tail
        return text[0].upper() + text[1:]


@dataclass(frozen=True)
class _Compound:
    objects: tuple[str, ...]
    held_out_objects: tuple[str, ...]
    pronoun: str
    templates: tuple[_Template, ...]
    held_out_templates: tuple[_Template, ...]


def _read_yaml(name: str) -> dict:
    path = resources.files("instructsd.data") / "banks" / name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InstructSDError(f"instruction bank file banks/{name} is missing from the "
                              "installed package; reinstall instructsd") from None
    if not isinstance(data, dict):
        raise InstructSDError(f"instruction bank banks/{name} is not a YAML mapping")
    return data


@functools.cache
def get_bank(task: str) -> InstructionBank:
    """The shipped bank of ``task``; an unknown task raises an error listing the known ones.

    A compound task (``"deblur+denoise"``) has no bank of its own: use
    :func:`sample_instruction` or :func:`canonical_instruction`.
    """
    if task not in BANK_TASKS:
        raise InstructSDError(
            f"no instruction bank for task {task!r}; banks exist for: {', '.join(BANK_TASKS)}"
            + (" (compound tasks are built from these; use sample_instruction)"
               if COMPOUND_SEP in task else "")
        )
    data = _read_yaml(f"{task}.yaml")
    clauses = data.get("clauses") or {}
    bank = InstructionBank(
        task=task,
        train=tuple(data["train"]),
        held_out=tuple(data["held_out"]),
        canonical=data["canonical"],
        clauses=tuple(clauses.get("train", ())),
        held_out_clauses=tuple(clauses.get("held_out", ())),
    )
    if bank.canonical not in bank.train:
        raise InstructSDError(f"banks/{task}.yaml: canonical {bank.canonical!r} must be in train")
    if set(bank.train) & set(bank.held_out):
        raise InstructSDError(f"banks/{task}.yaml: a paraphrase is both train and held_out")
    return bank


@functools.cache
def _compound() -> _Compound:
    data = _read_yaml("compound.yaml")
    return _Compound(
        objects=tuple(data["objects"]["train"]),
        held_out_objects=tuple(data["objects"]["held_out"]),
        pronoun=data["pronoun"],
        templates=tuple(_Template(**t) for t in data["templates"]["train"]),
        held_out_templates=tuple(_Template(**t) for t in data["templates"]["held_out"]),
    )


def split_task(task: str) -> list[str]:
    """``"deblur+denoise"`` -> ``["deblur", "denoise"]``, each checked against the banks."""
    parts = [p.strip() for p in task.split(COMPOUND_SEP)]
    for part in parts:
        get_bank(part)  # raises for an unknown name
    return parts


def _choice(items: tuple, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def sample_instruction(task: str, rng: np.random.Generator, *, held_out: bool = False) -> str:
    """One instruction for ``task``, drawn with ``rng``.

    A single task gives one of its bank's paraphrases. A compound task (names joined by
    ``+`` in the order the degradations were applied) gives a template filled with one
    clause per task, e.g. ``"First deblur the photo, then denoise it."``.

    Args:
        held_out: draw only from the held-out paraphrases / clauses / templates / objects
            (for evaluating generalisation). When False, held-out text is never returned.
    """
    parts = split_task(task)
    if len(parts) == 1:
        bank = get_bank(parts[0])
        return _choice(bank.held_out if held_out else bank.train, rng)
    comp = _compound()
    template = _choice(comp.held_out_templates if held_out else comp.templates, rng)
    obj = _choice(comp.held_out_objects if held_out else comp.objects, rng)
    clauses = []
    for k, name in enumerate(parts):
        bank = get_bank(name)
        clause = _choice(bank.held_out_clauses if held_out else bank.clauses, rng)
        clauses.append(clause.format(obj=obj if k == 0 else comp.pronoun))
    return template.join(clauses)


def canonical_instruction(task: str) -> str:
    """The fixed instruction: a bank's canonical one, or the first template and clauses."""
    parts = split_task(task)
    if len(parts) == 1:
        return get_bank(parts[0]).canonical
    comp = _compound()
    clauses = [get_bank(name).clauses[0].format(obj=comp.objects[0] if k == 0 else comp.pronoun)
               for k, name in enumerate(parts)]
    return comp.templates[0].join(clauses)


def all_instructions(task: str, *, held_out: bool = False) -> tuple[str, ...]:
    """Every instruction :func:`sample_instruction` can return for a single ``task``."""
    bank = get_bank(task)
    return bank.held_out if held_out else bank.train


def format_bank(task: str) -> str:
    """A bank as text, for ``instructsd data instructions TASK``."""
    bank = get_bank(task)
    lines = [f"{bank.task}  (canonical: {bank.canonical})", f"train ({len(bank.train)}):"]
    lines += [f"  - {t}" for t in bank.train]
    lines += [f"held_out ({len(bank.held_out)}):"] + [f"  - {t}" for t in bank.held_out]
    lines += ["clauses (train): " + "; ".join(bank.clauses),
              "clauses (held_out): " + "; ".join(bank.held_out_clauses)]
    return "\n".join(lines)
