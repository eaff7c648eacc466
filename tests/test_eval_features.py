"""The metric suite: pixel metrics on known cases, CLIP / DINO on tiny random networks, skip notes, provenance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from instructsd.eval.edit_metrics import EDIT_METRICS
from instructsd.eval.rows import TASK_CAPTIONS, Example, captions_for
from instructsd.eval.suite import CLIP_METRICS, ClipEmbedder, MetricSuite
from instructsd.models.tiny import save_tiny_clip, save_tiny_dino
from instructsd.eval.metrics import LOWER_IS_BETTER, PIXEL_METRICS, l1, l2, psnr, psnr_y, ssim_y
from instructsd.eval.provenance import model_hashes, package_versions, provenance, sha256_file


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric-nets")
    return str(save_tiny_clip(root / "clip", [c for pair in TASK_CAPTIONS.values() for c in pair])), str(save_tiny_dino(root / "dino"))


# ----------------------------------------------------------------------------
# Pixel metrics


def test_identical_images_are_perfect_on_every_pixel_metric() -> None:
    a = _noise(16, 16)
    scores = {name: fn(a, a) for name, fn in PIXEL_METRICS.items()}
    assert scores == pytest.approx({"psnr": 100.0, "ssim": 1.0, "psnr_y": 100.0, "ssim_y": 1.0, "l1": 0.0, "l2": 0.0})
    assert psnr(a, a, cap=None) == math.inf  # the mathematical value, on request
    assert LOWER_IS_BETTER >= {"l1", "l2", "lpips"}


def test_a_known_shift_gives_the_known_values() -> None:
    target = np.full((8, 8, 3), 100, np.uint8)
    pred = target + 10  # every value off by 10
    assert l1(pred, target) == pytest.approx(10 / 255)
    assert l2(pred, target) == pytest.approx((10 / 255) ** 2)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(255**2 / 100))
    # BT.601 Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255: a grey shift of 10 moves Y by 10 * 219 / 255.
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr_y(pred, target) == pytest.approx(10 * math.log10(255**2 / dy**2))
    # A uniform shift keeps structure; SSIM-Y drops only through the luminance term.
    assert 0.99 < ssim_y(pred, target) < 1.0


# ----------------------------------------------------------------------------
# Network metrics


def test_clip_and_dino_metrics_on_tiny_random_networks(nets) -> None:
    clip, dino = nets
    suite = MetricSuite.load(clip, dino, lpips="none")
    assert suite.names == [*PIXEL_METRICS, *EDIT_METRICS, *CLIP_METRICS, "dino"]
    assert suite.notes == ["lpips skipped: no model given (--lpips none)."]
    src, tgt = Image.fromarray(_noise(32, 32, 1)), Image.fromarray(_noise(32, 32, 2))
    ex = Example(src, tgt, *captions_for("denoise"))

    identity = suite.score(src, ex, key=0)
    assert identity["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert identity["clip_dir"] == 0.0  # no change, no direction
    perfect = suite.score(tgt, ex, key=0)
    assert perfect["clip_i"] == pytest.approx(1.0, abs=1e-5) and perfect["dino"] == pytest.approx(1.0, abs=1e-5)

    # The direction metric is the cosine of the two embedding differences, computed independently here.
    emb = ClipEmbedder.load(clip)
    e_src, e_out = emb.images([src])[0], emb.images([tgt])[0]
    t_in, t_out = emb.texts(list(captions_for("denoise")))
    expected = torch.nn.functional.cosine_similarity(e_out - e_src, t_out - t_in, dim=0).item()
    assert perfect["clip_dir"] == pytest.approx(expected, abs=1e-5)
    assert perfect["clip_t"] == pytest.approx(float(e_out @ t_out), abs=1e-5)
    for value in perfect.values():
        assert math.isfinite(value)


def test_unavailable_networks_are_skipped_with_a_note(tmp_path) -> None:
    suite = MetricSuite.load(tmp_path / "no-clip-here", None, "alex")
    assert suite.clip is None and suite.dino is None
    assert suite.names == [*PIXEL_METRICS, *EDIT_METRICS]
    text = " ".join(suite.notes)
    assert "clip_image, clip_dir, clip_t, clip_i skipped: could not load" in text and "no-clip-here" in text
    assert "dino skipped" in text and "lpips skipped" in text


def test_clip_needs_captions(nets) -> None:
    suite = MetricSuite.load(nets[0], None, None)
    im = Image.fromarray(_noise(32, 32))
    with pytest.raises(ValueError, match="caption"):
        suite.score(im, Example(im, im))
    assert captions_for("nosuchtask") == (None, None)
    assert captions_for("deblur+denoise") == ("a blurry, out-of-focus and noisy, grainy photo",
                                              "a sharp, in-focus and clean, noise-free photo")
    assert captions_for("denoise", {"input_caption": "a", "output_caption": "b"}) == ("a", "b")


def _builtin_tasks() -> list[str]:
    from instructsd.data.degradations import DEGRADATIONS
    from instructsd.data.tasks import TASKS

    return sorted({*TASKS, *(d.task for d in DEGRADATIONS.values())})


@pytest.mark.parametrize("task", _builtin_tasks())
def test_clip_metrics_score_every_builtin_task(nets, task) -> None:
    """Every built-in task (issue 12: `compare --clip` crashed on whitebalance) has a caption pair,
    and the suite scores a CLIP direction with it."""
    cin, cout = captions_for(task)
    assert cin and cout and cin != cout
    suite = MetricSuite.load(nets[0], None, None)
    src, out = Image.fromarray(_noise(32, 32, 1)), Image.fromarray(_noise(32, 32, 2))
    scores = suite.score(out, Example(src, src, cin, cout))
    assert set(CLIP_METRICS) <= set(scores) and -1.0 <= scores["clip_dir"] <= 1.0 and scores["clip_dir"] != 0.0


def test_every_restoration_task_composes_into_compound_captions() -> None:
    from instructsd.data.degradations import DEGRADATIONS

    restoration = sorted({d.task for d in DEGRADATIONS.values()})
    cin, cout = captions_for("+".join(restoration))
    assert cin is not None and all(part in cin for part in ("noisy", "colour-cast"))


# ----------------------------------------------------------------------------
# Provenance


def test_provenance_hashes_weight_files(tmp_path, nets) -> None:
    clip = nets[0]
    hashes = model_hashes(clip)
    assert list(hashes) == ["model.safetensors"]
    assert hashes["model.safetensors"] == sha256_file(f"{clip}/model.safetensors") and len(hashes["model.safetensors"]) == 64
    assert "(not hashed)" in model_hashes("nobody/not-a-cached-model")
    versions = package_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(torch.__version__.split("+")[0])
    prov = provenance({"clip": clip})
    assert prov["models"]["clip"]["sha256"] == hashes and "platform" in prov["machine"]
