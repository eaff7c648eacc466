"""Amount following (issue 15): estimators recover the applied amount; the per-op report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo

from instructsd.data import photo_ops as P
from instructsd.eval.amount import ESTIMATORS, amount_following, estimate_amount
from instructsd.errors import InstructSDError

TOLERANCE = {  # |estimated - applied| at every sampled level, on a 64 x 48 synthetic photo
    "exposure": 0.01, "contrast": 0.01, "saturation": 0.01, "vibrance": 0.01,
    "temperature": 0.01, "tint": 0.01, "highlights": 0.002, "shadows": 0.002,
    "vignette": 0.01, "grain": 0.3, "sharpen": 0.01, "hue": 0.1, "gamma": 0.01,
}
NEUTRAL = {"contrast": 1.0, "saturation": 1.0, "gamma": 1.0}


def _image():
    return np.asarray(photo(5, size=(64, 48)))


def _all_levels(name):
    op = P.OPS[name]
    for level in op.levels:
        for negative in (False, True) if op.signed else (False,):
            params = {"op": name, op.amount: op.signed_value(level.value, negative)}
            if name == "grain":
                params["seed"] = 7
            yield params


def test_every_op_with_an_amount_has_an_estimator():
    assert set(ESTIMATORS) == {n for n, o in P.OPS.items() if o.amount}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimating_a_known_edit_recovers_its_amount_and_identity_gives_the_neutral_value(name):
    image = _image()
    amount = P.OPS[name].amount
    for params in _all_levels(name):
        edited = P.apply(name, image, params)
        assert abs(estimate_amount(name, image, edited) - params[amount]) <= TOLERANCE[name], params
    assert abs(estimate_amount(name, image, image) - NEUTRAL.get(name, 0.0)) <= 1e-9


def test_exposure_estimate_ignores_clipped_highlights():
    image = _image()
    edited = P.apply("exposure", image, {"op": "exposure", "ev": 2.0})
    assert (edited == 255).mean() > 0.1  # much of the photo clipped
    assert abs(estimate_amount("exposure", image, edited) - 2.0) <= 0.02


def test_amount_following_separates_exact_half_strength_and_identity_outputs():
    image = _image()
    rng = np.random.default_rng(0)
    exact, half, identity = [], [], []
    for _ in range(12):
        params = P.sample_edit("exposure", rng)
        row = {"edit_params": P.edit_params_json(params), "input": image}
        exact.append({**row, "output": P.apply("exposure", image, params)})
        half.append({**row, "output": P.apply("exposure", image, {**params, "ev": params["ev"] / 2})})
        identity.append({**row, "output": image})
    compound = {"edit_params": [{"op": "flip"}, {"op": "exposure", "ev": 1.0}],
                "input": image, "output": image}
    good = amount_following(exact + [compound])
    assert good["skipped"] == 1 and good["ops"]["exposure"]["n"] == 12
    assert good["ops"]["exposure"]["mae"] < 0.01 and good["ops"]["exposure"]["pearson"] > 0.999
    assert good["ops"]["exposure"]["spearman"] > 0.999
    weak = amount_following(half)["ops"]["exposure"]
    # Half strength: ranked right (correlation ~1) but the error is half the mean |EV|.
    evs = np.array([abs(P.parse_edit_params(r["edit_params"])[0]["ev"]) for r in half])
    assert weak["pearson"] > 0.999 and abs(weak["mae"] - evs.mean() / 2) < 0.01
    none = amount_following(identity)["ops"]["exposure"]
    assert none["pearson"] is None and abs(none["mae"] - evs.mean()) < 1e-6


def test_unmeasurable_inputs_raise_actionable_errors():
    grey = np.full((16, 16, 3), 128, np.uint8)
    with pytest.raises(InstructSDError, match="no colour to measure a hue"):
        estimate_amount("hue", grey, grey)
    with pytest.raises(InstructSDError, match="no amount estimator for photo op 'flip'"):
        estimate_amount("flip", grey, grey)
    with pytest.raises(InstructSDError, match="differ in size"):
        estimate_amount("exposure", grey, grey[:8])
