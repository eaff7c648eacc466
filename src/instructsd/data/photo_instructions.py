"""Instructions for photo operations: banks whose templates state the amount (issue 15).

``banks/<op>.yaml`` use the shared bank format (train / held-out / clauses), but their entries are
templates with an ``{amount}`` slot ("by one stop", "slightly") and direction slots (``{increase}``
-> "increase" / "decrease", ``{warmer}`` -> "warmer" / "cooler"), filled from an edit's parameters by
:func:`instruction_for_edit`, so an instruction states exactly the edit that was applied
(:mod:`instructsd.data.photo_ops`).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np
import yaml

from instructsd.data.instructions import InstructionBank
from instructsd.data.photo_ops import COMPOUND_SEP, PhotoOp, get_op
from instructsd.errors import InstructSDError


@functools.cache
def get_op_bank(op: str) -> InstructionBank:
    """``banks/<op>.yaml`` in the shared bank format; entries are templates (see module doc)."""
    o = get_op(op)
    path = resources.files("instructsd.data") / "banks" / f"{o.name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InstructSDError(f"instruction bank banks/{o.name}.yaml is missing from the "
                              "installed package; reinstall instructsd") from None
    clauses = data.get("clauses") or {}
    bank = InstructionBank(task=data["task"], train=tuple(data["train"]),
                           held_out=tuple(data["held_out"]), canonical=data["canonical"],
                           clauses=tuple(clauses.get("train", ())),
                           held_out_clauses=tuple(clauses.get("held_out", ())))
    where = f"banks/{o.name}.yaml"
    if bank.task != o.name:
        raise InstructSDError(f"{where}: task {bank.task!r} must be {o.name!r}")
    if bank.canonical not in bank.train:
        raise InstructSDError(f"{where}: canonical {bank.canonical!r} must be in train")
    if set(bank.train) & set(bank.held_out):
        raise InstructSDError(f"{where}: a paraphrase is both train and held_out")
    allowed = set(o.directions) | ({"amount"} if o.amount else set())
    for text in bank.train + bank.held_out + bank.clauses + bank.held_out_clauses:
        slots = _slots(text) - {"obj"}
        if not slots <= allowed:
            raise InstructSDError(f"{where}: {text!r} uses slots {sorted(slots - allowed)}; "
                                  f"op {o.name!r} fills {sorted(allowed)}")
        if o.amount and "amount" not in slots:
            raise InstructSDError(f"{where}: {text!r} must state the amount with {{amount}}")
    return bank


def _slots(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _fill(o: PhotoOp, text: str, params: Mapping, rng: np.random.Generator, **extra) -> str:
    values = dict(extra)
    negative = False
    if o.amount is not None:
        level, negative = o.level_of(params)
        values["amount"] = _choice(level.words, rng)
    for slot, (pos, neg) in o.directions.items():
        values[slot] = neg if negative else pos
    return text.format(**values)


def _choice(items: Sequence, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


@functools.cache
def _compound_templates() -> dict:
    path = resources.files("instructsd.data") / "banks" / "compound.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def instruction_for_edit(op: str, params: Mapping | Sequence[Mapping],
                         rng: np.random.Generator, *, held_out: bool = False) -> str:
    """The instruction for an edit, its amount and direction stated.

    ``op`` is an op name with ``params`` one dict (``"Increase the exposure by one stop."``),
    or op names joined by ``+`` with ``params`` a list in the same order, which joins one
    clause per op with the shared ``banks/compound.yaml`` templates
    (``"Make the photo slightly warmer and brighten it by one stop."``).

    Args:
        held_out: draw only held-out templates (and clauses, compound templates, objects),
            to measure generalisation to unseen wordings; False never returns them.
    """
    names = [n.strip() for n in op.split(COMPOUND_SEP)]
    edits = [params] if isinstance(params, Mapping) else list(params)
    if [p.get("op") for p in edits] != names:
        raise InstructSDError(f"instruction for {op!r}: edit_params ops "
                              f"{[p.get('op') for p in edits]} do not match")
    if len(names) == 1:
        o, bank = get_op(names[0]), get_op_bank(names[0])
        text = _choice(bank.held_out if held_out else bank.train, rng)
        return _capitalise(_fill(o, text, edits[0], rng))
    comp = _compound_templates()
    key = "held_out" if held_out else "train"
    template = _choice(comp["templates"][key], rng)
    obj = _choice(comp["objects"][key], rng)
    clauses = []
    for k, p in enumerate(edits):
        o, bank = get_op(p["op"]), get_op_bank(p["op"])
        clause = _choice(bank.held_out_clauses if held_out else bank.clauses, rng)
        text = _fill(o, clause, p, rng, obj=obj if k == 0 else comp["pronoun"])
        if k > 0:  # "deepen the shadows of it" reads better as "deepen its shadows"
            text = re.sub(rf"\bthe ([\w -]+?) of {comp['pronoun']}\b", r"its \1", text)
        clauses.append(text)
    text = template["head"] + clauses[0]
    for k, clause in enumerate(clauses[1:], start=1):
        text += (template["last"] if k == len(clauses) - 1 else template["sep"]) + clause
    return _capitalise(text + template["tail"])


def canonical_instruction_for_edit(params: Mapping) -> str:
    """The bank's canonical template filled with the level's first words (the ``fixed`` policy)."""
    o = get_op(params["op"])
    text = get_op_bank(o.name).canonical
    values: dict = {}
    negative = False
    if o.amount is not None:
        level, negative = o.level_of(params)
        values["amount"] = level.words[0]
    for slot, (pos, neg) in o.directions.items():
        values[slot] = neg if negative else pos
    return _capitalise(text.format(**values))


def all_op_instructions(op: str, *, held_out: bool = False) -> set[str]:
    """Every single-op instruction :func:`instruction_for_edit` can produce (for tests/cards)."""
    o, bank = get_op(op), get_op_bank(op)
    out = set()
    for text in bank.held_out if held_out else bank.train:
        for level in o.levels or (None,):
            for negative in ((False, True) if o.signed else (False,)):
                for word in (level.words if level else ("",)):
                    values = {"amount": word} if level else {}
                    for slot, (pos, neg) in o.directions.items():
                        values[slot] = neg if negative else pos
                    out.add(_capitalise(text.format(**values)))
    return out
