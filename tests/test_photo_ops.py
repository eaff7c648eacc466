"""Photo operations (issue 15): the exact exposure formula, the registry, banks with amount slots,
compound edits and inverse pairs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from instructsd.data import photo_instructions as PI
from instructsd.data import photo_ops as P
from instructsd.data import photo_pairs as PP
from instructsd.errors import InstructSDError


def _spec_exposure_lut(ev: float) -> np.ndarray:
    """issue 15's formula, written from IEC 61966-2-1 one level at a time with `math`."""
    out = []
    for level in range(256):
        c = level / 255
        lin = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
        lin = min(max(lin * 2 ** ev, 0.0), 1.0)
        enc = 12.92 * lin if lin <= 0.0031308 else 1.055 * lin ** (1 / 2.4) - 0.055
        out.append(round(enc * 255))
    return np.array(out)


@pytest.mark.parametrize("ev", [-2.0, -0.5, 1 / 3, 1.0, 2.0])
def test_exposure_is_the_linear_light_formula_within_8_bit_rounding(ev):
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 85)], -1).reshape(16, 16, 3)
    edited = P.apply("exposure", image, {"op": "exposure", "ev": ev}).astype(int)
    expected = _spec_exposure_lut(ev)[image]
    assert np.abs(edited - expected).max() <= 1  # a float tie at .5 may round either way
    assert (edited == expected).mean() > 0.99


def test_srgb_curve_is_continuous_and_round_trips_every_level():
    assert math.isclose(float(P.srgb_to_linear(0.04045)), 0.04045 / 12.92)
    assert math.isclose(float(P.linear_to_srgb(0.0031308)), 12.92 * 0.0031308)
    assert abs(float(P.linear_to_srgb(1.0)) - 1.0) < 1e-12
    levels = np.arange(256) / 255
    back = np.rint(P.linear_to_srgb(P.srgb_to_linear(levels)) * 255)
    assert np.array_equal(back, np.arange(256))


def test_registry_declares_at_least_12_ops_with_levels_inside_their_ranges():
    assert len(P.OPS) >= 12
    for name, op in P.OPS.items():
        assert op.fn.__doc__, name
        if op.amount is None:
            assert not op.levels and not op.directions
            continue
        lo, hi = op.ranges[op.amount]
        for level in op.levels:
            assert level.words
            for negative in (False, True) if op.signed else (False,):
                assert lo <= op.signed_value(level.value, negative) <= hi


@pytest.mark.parametrize("name", sorted(P.OPS))
def test_every_op_is_pure_and_returns_uint8_rgb_for_arrays_and_pil(name):
    image = np.asarray(photo(1, size=(24, 16)))
    before = image.copy()
    params = P.sample_edit(name, np.random.default_rng(0))
    out = P.apply(name, image, params)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(image, before)  # the input is not modified
    assert np.array_equal(out, P.apply(name, Image.fromarray(image), params))
    assert np.array_equal(out, P.apply(name, image, json.loads(P.edit_params_json(params))))
    assert not np.array_equal(out, image)  # every sampled edit changes the photo


IDENTITY = {"exposure": 0.0, "contrast": 1.0, "saturation": 1.0, "vibrance": 0.0,
            "temperature": 0.0, "tint": 0.0, "highlights": 0.0, "shadows": 0.0,
            "vignette": 0.0, "grain": 0.0, "sharpen": 0.0, "hue": 0.0, "gamma": 1.0}


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_the_neutral_amount_leaves_the_photo_alone(name):
    image = np.asarray(photo(2, size=(24, 16)))
    params = {"op": name, P.OPS[name].amount: IDENTITY[name]}
    if name == "grain":
        params["seed"] = 0
    out = P.apply(name, image, params).astype(int)
    assert np.abs(out - image).max() <= 1


def test_sampling_is_seeded_and_bad_params_are_refused():
    a = [P.sample_edit("temperature", np.random.default_rng(s)) for s in range(30)]
    assert a == [P.sample_edit("temperature", np.random.default_rng(s)) for s in range(30)]
    assert {p["shift"] > 0 for p in a} == {True, False}  # both directions are drawn
    image = np.asarray(photo(0, size=(8, 8)))
    with pytest.raises(InstructSDError, match=r"ev=5.0 is outside \[-3.0, 3.0\]"):
        P.apply("exposure", image, {"op": "exposure", "ev": 5.0})
    with pytest.raises(InstructSDError, match="parameters must be exactly"):
        P.apply("contrast", image, {"op": "contrast", "amount": 1.2})
    with pytest.raises(InstructSDError, match="unknown photo op 'curves'; photo ops: exposure"):
        P.sample_edit("curves", np.random.default_rng(0))
    with pytest.raises(InstructSDError, match="uint8 H x W x 3"):
        P.apply("flip", image.astype(np.float32), {"op": "flip"})


def test_edit_params_column_is_json_with_the_op_first():
    assert P.edit_params_json({"ev": 1.0, "op": "exposure"}) == '{"op": "exposure", "ev": 1.0}'
    edits = [{"op": "temperature", "shift": 0.3}, {"op": "exposure", "ev": 1.0}]
    assert P.parse_edit_params(P.edit_params_json(edits)) == edits
    with pytest.raises(InstructSDError, match="no 'op' key"):
        P.parse_edit_params('{"ev": 1.0}')


@pytest.mark.parametrize("name", sorted(P.OPS))
def test_every_bank_has_50_natural_templates_and_a_disjoint_held_out_split(name):
    bank = PI.get_op_bank(name)
    everything = bank.train + bank.held_out
    assert len(set(everything)) == len(everything) >= 50
    assert bank.held_out and not set(bank.held_out) & set(bank.train)
    assert bank.canonical in bank.train and bank.clauses and bank.held_out_clauses
    train, held = PI.all_op_instructions(name), PI.all_op_instructions(name, held_out=True)
    assert not train & held  # filling slots never turns a held-out template into a train one
    for text in train | held:
        assert text[0].isupper() and text[-1] in ".?!" and "{" not in text, text
        assert "  " not in text and " ," not in text, text


def test_instructions_state_the_amount_and_the_direction():
    rng = np.random.default_rng(0)
    for _ in range(40):
        up = PI.instruction_for_edit("exposure", {"op": "exposure", "ev": 1.0}, rng).lower()
        assert any(w in up for w in ("one stop", "a stop", "a full stop")), up
        assert not any(w in up for w in ("darker", "darken", "decrease", "lower", "less")), up
        down = PI.instruction_for_edit("exposure", {"op": "exposure", "ev": -0.5}, rng).lower()
        assert "half a stop" in down and "brighter" not in down and "increase" not in down
        cool = PI.instruction_for_edit("temperature", {"op": "temperature", "shift": -0.6}, rng)
        assert not any(w in cool.lower() for w in ("warmer", "amber", "warm up", "more warmth"))
        assert any(w in cool for w in ("a lot", "considerably", "dramatically")), cool
        slight = PI.instruction_for_edit("gamma", {"op": "gamma", "gamma": 0.8}, rng)
        assert any(w in slight for w in ("slightly", "a little", "a bit")), slight
    assert PI.canonical_instruction_for_edit({"op": "exposure", "ev": -1.0}) == \
        "Decrease the exposure by one stop."
    assert PI.canonical_instruction_for_edit({"op": "flip"}) == "Flip the image horizontally."
    with pytest.raises(InstructSDError, match="not one of its levels"):
        PI.instruction_for_edit("exposure", {"op": "exposure", "ev": 0.9}, rng)


def test_held_out_instructions_only_when_asked():
    rng = np.random.default_rng(1)
    for name in ("exposure", "hue", "flip"):
        train, held = PI.all_op_instructions(name), PI.all_op_instructions(name, held_out=True)
        for _ in range(30):
            params = P.sample_edit(name, rng)
            assert PI.instruction_for_edit(name, params, rng) in train
            assert PI.instruction_for_edit(name, params, rng, held_out=True) in held


def test_compound_edits_apply_in_order_and_join_one_clause_per_op():
    rng = np.random.default_rng(2)
    image = np.asarray(photo(3, size=(24, 16)))
    for _ in range(20):
        edits = PP.sample_compound(rng)
        assert len({e["op"] for e in edits}) == 2
        assert not {"black_and_white", "sepia"} & {e["op"] for e in edits}
        task = "+".join(e["op"] for e in edits)
        text = PI.instruction_for_edit(task, edits, rng)
        assert text[0].isupper() and text[-1] in ".?" and "{" not in text, text
        first = P.apply(edits[0]["op"], image, edits[0])
        assert np.array_equal(P.apply_edits(image, edits), P.apply(edits[1]["op"], first, edits[1]))
    edits = [{"op": "temperature", "shift": 0.15}, {"op": "exposure", "ev": 1.0}]
    text = PI.instruction_for_edit("temperature+exposure", edits, np.random.default_rng(0))
    low = text.lower()
    i_warm = min(low.find(w) for w in ("warm", "amber") if w in low)
    i_stop = low.find("stop")
    assert 0 <= i_warm < i_stop, text  # clauses in the order applied
    with pytest.raises(InstructSDError, match="do not match"):
        PI.instruction_for_edit("exposure+temperature", edits, rng)


def test_inverse_pairs_restore_the_original_or_are_refused_when_clipping_loses_it():
    image = np.asarray(photo(4, size=(32, 24)))
    pair = PP.inverse_pair("exposure", image, {"op": "exposure", "ev": -1.0})
    assert pair is not None
    edited, inverse = pair
    assert inverse == {"op": "exposure", "ev": 1.0}
    back = P.apply("exposure", edited, inverse).astype(int)
    assert np.percentile(np.abs(back - image), 99) <= P.INVERSE_TOLERANCE
    # +2 EV clips the bright half of this photo: -2 EV cannot bring it back.
    assert PP.inverse_pair("exposure", image, {"op": "exposure", "ev": 2.0}) is None
    flipped, inv = PP.inverse_pair("flip", image, {"op": "flip"})
    assert np.array_equal(P.apply("flip", flipped, inv), image)
    assert P.OPS["hue"].inverse({"op": "hue", "degrees": 30.0})["degrees"] == -30.0
    assert P.OPS["gamma"].inverse({"op": "gamma", "gamma": 0.5})["gamma"] == 2.0
    with pytest.raises(InstructSDError, match="has no inverse; invertible ops: exposure"):
        PP.inverse_pair("grain", image, {"op": "grain", "sigma": 4.0, "seed": 0})
