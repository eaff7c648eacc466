"""Edit-aware metrics (issue 16): the automatic edit mask, preservation / edit strength / identity on
hand-built images, their place in the metric suite and compare, the region-weighted loss, the config keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instructsd.config import load_config
from instructsd.errors import InstructSDError
from instructsd.eval.compare import GROUND_TRUTH, IDENTITY, collapse_notes
from instructsd.eval.edit_metrics import (
    COLLAPSE_RATE,
    EDIT_METRICS,
    MASK_DILATION_PX,
    MASK_THRESHOLD,
    edit_mask,
    edit_scores,
    is_identity,
)
from instructsd.eval.metrics import PIXEL_METRICS, l1
from instructsd.eval.plots import tradeoff_png, tradeoff_svg
from instructsd.eval.rows import Example
from instructsd.eval.suite import MetricSuite
from instructsd.models.loading import load_components
from instructsd.train.config import TrainConfig
from instructsd.train.objective import DropoutProbs, instruct_pix2pix_loss, region_weight_map, region_weights


def _pair(size: int = 20, block=(slice(6, 10), slice(6, 10)), change: int = 100):
    """A flat grey input and a target with one square changed by ``change`` levels."""
    source = np.full((size, size, 3), 100, np.uint8)
    target = source.copy()
    target[block] += np.uint8(change)
    return source, target


# ----------------------------------------------------------------------------
# The mask


def test_the_mask_is_the_thresholded_difference_dilated_by_its_documented_radius() -> None:
    source, target = _pair()
    mask = edit_mask(source, target)
    r = MASK_DILATION_PX
    expected = np.zeros((20, 20), bool)
    expected[6 - r:10 + r, 6 - r:10 + r] = True  # the 4x4 block grown by r on every side
    assert np.array_equal(mask, expected)
    # The threshold sits between 8-bit levels: 25 of 255 is under 0.1, 26 over it.
    assert MASK_THRESHOLD == 0.1
    assert not edit_mask(*_pair(change=25)).any()
    assert edit_mask(*_pair(change=26)).sum() == expected.sum()
    # One channel is enough.
    one = source.copy()
    one[0, 0, 2] = 200
    assert edit_mask(source, one)[0, 0]
    with pytest.raises(ValueError, match="resize"):
        edit_mask(source, source[:10])


def test_preservation_and_edit_strength_on_a_known_mask() -> None:
    source, target = _pair()
    mask = edit_mask(source, target)  # 8x8 = 64 pixels inside, 400 - 64 = 336 outside
    output = source.copy()
    output[mask] += 51  # the whole edit region changed by 51 levels = 0.2
    output[0, 0] += 30  # one pixel outside changed by 30 levels
    scores = edit_scores(output, source, target, mask)
    assert scores["edit_strength"] == pytest.approx(51 / 255)
    assert scores["preservation"] == pytest.approx(30 / 255 / 336)
    # The target changes its 16 block pixels by 100 of the region's 64: 0.2 vs 100 * 16 / 64 / 255 = 0.098.
    assert scores["identity_rate"] == 0.0
    # A perceptual distance is applied to composites: with L1 as the distance, the outside-only composite
    # differs from the input only where preservation measured, diluted over the whole image.
    with_distance = edit_scores(output, source, target, mask, distance=l1)
    assert with_distance["preservation_lpips"] == pytest.approx(30 / 255 / 400)
    assert with_distance["edit_strength_lpips"] == pytest.approx(51 / 255 * 64 / 400)


def test_identity_is_judged_against_the_targets_own_change() -> None:
    source, target = _pair()
    mask = edit_mask(source, target)
    assert is_identity(source, source, target, mask)  # the input itself
    assert not is_identity(target, source, target, mask)  # the ground truth
    # A VAE-like round trip: every value off by 4 levels (0.016) while the target changes the region by 0.098.
    assert is_identity(source + 4, source, target, mask)
    assert not is_identity(source + 8, source, target, mask)  # 0.031 > 0.2 * 0.098


def test_empty_and_full_masks() -> None:
    source = np.full((12, 12, 3), 80, np.uint8)
    output = source + 10
    empty = edit_mask(source, source)
    assert not empty.any()
    scores = edit_scores(output, source, source, empty)
    assert scores["edit_strength"] == 0.0  # no edit region, nothing to measure there
    assert scores["preservation"] == pytest.approx(10 / 255)  # the whole image should have stayed
    assert scores["identity_rate"] == 0.0 and edit_scores(source, source, source, empty)["identity_rate"] == 1.0
    full = np.ones((12, 12), bool)
    scores = edit_scores(output, source, source + 100, full)
    assert scores["preservation"] == 0.0 and scores["edit_strength"] == pytest.approx(10 / 255)


# ----------------------------------------------------------------------------
# One definition for validation, eval and compare


def test_the_suite_reports_the_edit_metrics_and_computes_each_mask_once() -> None:
    suite = MetricSuite.headline()
    assert suite.names == ["psnr", "ssim", *EDIT_METRICS]
    assert MetricSuite.load(None, None, None).names == [*PIXEL_METRICS, *EDIT_METRICS]
    assert MetricSuite(edit=False).names == list(PIXEL_METRICS)
    source, target = (Image.fromarray(a) for a in _pair())
    ex = Example(source, target)
    same = suite.score(source, ex, key=7)
    assert (same["identity_rate"], same["preservation"], same["edit_strength"]) == (1.0, 0.0, 0.0)
    gt = suite.score(target, ex, key=7)
    assert gt["identity_rate"] == 0.0 and gt["edit_strength"] == pytest.approx(100 * 16 / 64 / 255)
    assert [k for k in suite._cache if k[0] == "mask"] == [("mask", 7)]


def test_compare_flags_a_collapsed_model_but_not_the_baselines() -> None:
    def row(method, rate, task="all"):
        return {"task": task, "method": method, "identity_rate": rate}

    notes = collapse_notes([row(IDENTITY, 1.0), row(GROUND_TRUTH, 0.0), row("ok", COLLAPSE_RATE - 0.01),
                            row("stuck", 0.75), row("stuck", 1.0, task="denoise")])
    assert len(notes) == 1 and notes[0].startswith("stuck returned its input for 75% of the rows")


def test_tradeoff_plots() -> None:
    series = {"step 2, s_T=3": [(0.1, 0.2, "1"), (0.05, 0.1, "2")], "step 4, s_T=3": [(0.2, 0.3, "1")]}
    svg = tradeoff_svg(series, "x", "y")
    assert svg.count("<polyline") == 2 and "step 4, s_T=3" in svg
    image = tradeoff_png(series, "x", "y")
    assert image.size == (560, 340) and len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 3  # drawn, not blank


# ----------------------------------------------------------------------------
# The edit-region-weighted loss


def test_region_weights_follow_the_mask_and_are_off_by_default() -> None:
    source, target = _pair(size=16, block=(slice(0, 4), slice(0, 4)))
    as_tensor = [torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1 for a in (source, target)]
    weights = region_weight_map(*as_tensor, inside=3.0, outside=0.5)
    mask = torch.from_numpy(edit_mask(source, target))
    assert weights.shape == (1, 1, 16, 16)
    assert torch.all(weights[0, 0][mask] == 3.0) and torch.all(weights[0, 0][~mask] == 0.5)
    batch = {"input_pixels": as_tensor[0], "edited_pixels": as_tensor[1]}
    assert region_weights(TrainConfig(), batch) is None
    assert torch.equal(region_weights(TrainConfig(edit_region_weight=3.0, keep_region_weight=0.5), batch), weights)


def test_the_weighted_loss_is_the_plain_loss_at_one_and_moves_with_the_weights(tiny_model) -> None:
    parts = load_components(tiny_model)
    unet, scheduler = parts.unet.eval(), parts.scheduler
    torch.manual_seed(0)
    latents, image_latents = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    dim = unet.config.cross_attention_dim
    text, null_text = torch.randn(2, 77, dim), torch.randn(1, 77, dim)
    source, target = _pair(size=32, block=(slice(0, 12), slice(0, 12)))
    pixels = [torch.from_numpy(a).permute(2, 0, 1)[None].repeat(2, 1, 1, 1).float() / 127.5 - 1 for a in (source, target)]

    def loss(inside=None, outside=None, **kw):
        weights = None if inside is None else region_weight_map(*pixels, inside, outside)
        with torch.no_grad():
            return instruct_pix2pix_loss(unet, scheduler, latents, image_latents, text, null_text,
                                         DropoutProbs(text=0, image=0, both=0), torch.Generator().manual_seed(5),
                                         weights=weights, **kw).item()

    for kw in ({}, {"snr_gamma": 5.0}):
        plain = loss(**kw)
        assert loss(1.0, 1.0, **kw) == pytest.approx(plain, rel=1e-6)
        more, less = loss(2.0, 1.0, **kw), loss(0.0, 1.0, **kw)
        assert more > plain > less  # weighting the edit region up raises the loss, weighting it out lowers it
        assert more + less == pytest.approx(2 * plain, rel=1e-5)  # weights 1 ± m: linear in the weights
        assert loss(1.0, 0.0, **kw) < plain


def test_config_keys_are_checked() -> None:
    cfg = load_config(TrainConfig, None, ["validation_every=2", "validation.sweep=true", "validation.sweep_text=[2, 5]",
                                          "validation.best_metric=psnr", "validation.final_is_best=true"])
    assert cfg.validation.sweep_text == [2, 5] and cfg.validation.edit_settings().guidance_scale == 7.0
    for bad, message in ((["validation.final_is_best=true", "validation.best_metric="], "needs validation.best_metric"),
                         (["validation.final_is_best=true", "validation.best_metric=psnr"], "validation_every > 0"),
                         (["validation.sweep_image=[]"], "sweep_image must be a non-empty list"),
                         (["validation.sweep_text=[-1]"], "sweep_text must be"),
                         (["edit_region_weight=2", "cache_latents=true"], "cache_latents=true"),
                         (["edit_region_weight=0", "keep_region_weight=0"], "not both 0")):
        with pytest.raises(InstructSDError, match=message):
            load_config(TrainConfig, None, bad)
