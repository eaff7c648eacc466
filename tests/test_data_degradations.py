"""Synthetic degradations: deterministic per seed, and each changes the image as documented."""

from __future__ import annotations

import numpy as np
import pytest

from instructsd.data.degradations import (
    DEGRADATIONS,
    DegradationSpec,
    degrade,
    disk_kernel,
    motion_kernel,
    parse_specs,
)
from instructsd.errors import InstructSDError


def _photo(size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus a few sharp edges: something blur visibly changes."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([200 * x + 30, 200 * y + 30, 120 + 60 * np.sin(6 * x)], axis=-1)
    img[size // 4: size // 2, size // 4: 3 * size // 4] = (240, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def _flat(level: int, size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), level, np.uint8)


def _high_freq(a: np.ndarray) -> float:
    g = a.astype(np.float64).mean(-1)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_each_degradation_is_deterministic_for_a_seed_and_changes_the_image(name):
    clean = _photo()
    a, pa = DEGRADATIONS[name](clean, np.random.default_rng(3))
    b, pb = DEGRADATIONS[name](clean, np.random.default_rng(3))
    c, _ = DEGRADATIONS[name](clean, np.random.default_rng(4))
    assert a.dtype == np.uint8 and a.shape == clean.shape
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, clean)
    assert not np.array_equal(a, c)
    for key, (lo, hi) in DEGRADATIONS[name].ranges.items():
        assert lo <= pa[key] <= hi


def test_gaussian_noise_has_the_drawn_std():
    clean = _flat(128)
    noisy, p = DEGRADATIONS["gaussian_noise"](clean, np.random.default_rng(0), {"sigma": (20, 20)})
    assert p["sigma"] == 20
    assert np.std(noisy.astype(float) - clean) == pytest.approx(20, rel=0.05)


def test_poisson_gaussian_noise_grows_with_brightness_as_documented():
    rng = np.random.default_rng(0)
    ranges = {"photons": (50, 50), "read_sigma": (2, 2)}
    stds = {}
    for level in (40, 200):
        noisy, _ = DEGRADATIONS["poisson_gaussian_noise"](_flat(level, 128), rng, ranges)
        stds[level] = np.std(noisy.astype(float))
        expected = np.sqrt(255 * level / 50 + 2 ** 2)  # var = 255 v / photons + read^2
        assert stds[level] == pytest.approx(expected, rel=0.08)
    assert stds[200] > 1.8 * stds[40]


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "defocus_blur"])
def test_blurs_remove_high_frequencies_and_keep_the_mean(name):
    clean = np.random.default_rng(0).integers(0, 256, (48, 48, 3)).astype(np.uint8)  # texture
    blurred, _ = DEGRADATIONS[name](clean, np.random.default_rng(0))
    assert _high_freq(blurred) < 0.5 * _high_freq(clean)
    assert abs(blurred.mean() - clean.mean()) < 2


def test_blur_kernels_are_normalised_and_shaped():
    k = motion_kernel(9, 0)
    assert k.sum() == pytest.approx(1) and k.shape == (9, 9)
    assert k[4].sum() == pytest.approx(1, abs=1e-6)  # horizontal: all mass on the middle row
    d = disk_kernel(3)
    assert d.sum() == pytest.approx(1) and d[3, 3] == d.max() and d[0, 0] == 0


def test_rain_only_brightens_with_streaks_along_the_angle():
    clean = _flat(60)
    rainy, p = DEGRADATIONS["rain"](clean, np.random.default_rng(0), {"angle": (0, 0)})
    diff = rainy.astype(int) - clean
    assert diff.min() >= 0 and (diff > 20).mean() > 0.02
    col = (diff.mean(-1) > 20).astype(float)
    # vertical streaks: neighbours along a column agree more than along a row
    assert (col[1:] == col[:-1]).mean() > (col[:, 1:] == col[:, :-1]).mean()


def test_lowlight_lowers_brightness_as_documented():
    clean = _flat(200)
    ranges = {"gamma": (2, 2), "scale": (0.5, 0.5), "sigma": (0, 0)}
    dark, _ = DEGRADATIONS["lowlight"](clean, np.random.default_rng(0), ranges)
    assert dark.mean() == pytest.approx(255 * 0.5 * (200 / 255) ** 2, abs=0.6)


def test_haze_follows_the_scattering_model():
    clean = _photo(64)
    hazy, p = DEGRADATIONS["haze"](clean, np.random.default_rng(0),
                                  {"beta": (1, 1), "airlight": (0.9, 0.9), "depth_slope": (0, 0)})
    t = np.exp(-1.0)  # depth 1 everywhere
    expected = clean * t + 255 * 0.9 * (1 - t)
    assert np.abs(hazy - expected).max() <= 0.51
    assert hazy.std() < clean.std() * 0.5  # contrast drops
    # with a depth slope the top (far) is hazier than the bottom (near)
    sloped, _ = DEGRADATIONS["haze"](_flat(30), np.random.default_rng(0), {"depth_slope": (0.7, 0.7)})
    assert sloped[0].mean() > sloped[-1].mean() + 10


def test_jpeg_lower_quality_loses_more():
    clean = _photo(64)
    errs = [np.abs(DEGRADATIONS["jpeg"](clean, np.random.default_rng(0), {"quality": (q, q)})[0]
                   .astype(int) - clean).mean() for q in (10, 40, 95)]
    assert errs[0] > errs[1] > errs[2]


def test_composition_applies_in_order_and_names_the_compound_task():
    clean = _photo()
    out, task, applied = degrade(clean, ["blur", "gaussian_noise"], np.random.default_rng(0))
    assert task == "deblur+denoise"
    assert applied[0]["name"] in ("gaussian_blur", "motion_blur", "defocus_blur")
    assert applied[1]["name"] == "gaussian_noise"
    again, _, applied2 = degrade(clean, ["blur", "gaussian_noise"], np.random.default_rng(0))
    assert np.array_equal(out, again) and applied == applied2
    _, task2, _ = degrade(clean, ["jpeg", "gaussian_blur", "motion_blur"], np.random.default_rng(0))
    assert task2 == "jpeg+deblur"  # consecutive steps of one task are named once
    groups = {degrade(clean, ["noise"], np.random.default_rng(s))[2][0]["name"] for s in range(20)}
    assert groups == {"gaussian_noise", "poisson_gaussian_noise"}


def test_bad_specs_are_clear_errors():
    with pytest.raises(InstructSDError, match="unknown degradation 'fog'.*haze"):
        parse_specs(["fog"])
    with pytest.raises(InstructSDError, match="no parameter 'radius'.*sigma"):
        DegradationSpec("gaussian_blur", {"radius": (1, 2)})
    with pytest.raises(InstructSDError, match="low > high"):
        DEGRADATIONS["jpeg"](_photo(), np.random.default_rng(0), {"quality": (50, 10)})
    with pytest.raises(InstructSDError, match="uint8 H x W x 3"):
        DEGRADATIONS["jpeg"](_photo().astype(float), np.random.default_rng(0))
    specs = parse_specs(["blur", {"name": "gaussian_noise", "sigma": [5, 10]}])
    assert specs[1].ranges == {"sigma": [5, 10]}
