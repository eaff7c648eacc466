"""Evaluation metrics, their summary, the HTML report and the PNG contact sheet."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from instructsd.eval.metrics import METRICS, PSNR_CAP_DB, psnr, ssim, summarize, to_array
from instructsd.eval.report import save_grid, write_report


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------
# Metrics


def test_to_array_accepts_pil_and_grey() -> None:
    im = Image.new("L", (5, 4), 7)
    a = to_array(im)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8 and (a == 7).all()
    assert to_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="uint8"):
        to_array(np.zeros((4, 5, 3), np.float32))


def test_identical_images_score_cap_and_one() -> None:
    a = _noise(16, 16)
    assert psnr(a, a) == PSNR_CAP_DB == 100.0
    assert ssim(a, a) == pytest.approx(1.0)
    assert set(METRICS) == {"psnr", "ssim"}


def test_psnr_matches_analytic_value() -> None:
    target = np.full((8, 8, 3), 100, np.uint8)
    pred = target.copy()
    pred[:4] += 10  # half the values off by 10 -> MSE = 50
    assert psnr(pred, target) == pytest.approx(10 * math.log10(255**2 / 50))
    assert psnr(Image.fromarray(pred), Image.fromarray(target)) == pytest.approx(10 * math.log10(255**2 / 50))


def test_ssim_is_lower_for_noisier_images_and_works_on_tiny_images() -> None:
    target = _noise(32, 32)
    near = np.clip(target.astype(int) + np.random.default_rng(1).integers(-5, 6, target.shape), 0, 255).astype(np.uint8)
    assert ssim(near, target) > ssim(_noise(32, 32, seed=2), target)
    assert -1.0 <= ssim(_noise(4, 5, 1), _noise(4, 5, 2)) <= 1.0  # window shrunk to 3
    with pytest.raises(ValueError, match="3x3"):
        ssim(_noise(2, 8), _noise(2, 8))


def _smooth_pair(h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A textured target and a noisy copy: SSIM well inside (0, 1), where window choices show."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    target = gaussian_filter(rng.integers(0, 256, (h, w, 3)).astype(float), (2, 2, 0)).astype(np.uint8)
    pred = np.clip(target + rng.normal(0, 12, target.shape), 0, 255).astype(np.uint8)
    return pred, target


def test_ssim_default_is_wang_et_al_gaussian_and_uniform7_is_the_old_value() -> None:
    """Wang et al. 2004: 11x11 Gaussian (sigma 1.5), K1 0.01, K2 0.03, population covariances, the
    valid region only. scikit-image computes exactly that with these arguments, and its default
    (7x7 box, sample covariances) is what instructsd reported before issue 12."""
    from skimage.metrics import structural_similarity

    from instructsd.eval.metrics import _luma, ssim_y

    pred, target = _smooth_pair()
    wang = structural_similarity(target, pred, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, K1=0.01, K2=0.03)
    old = structural_similarity(target, pred, channel_axis=-1, data_range=255, win_size=7)
    assert ssim(pred, target) == pytest.approx(wang, abs=1e-9)
    assert ssim(pred, target, window="uniform7") == pytest.approx(old, abs=1e-9)
    assert ssim(pred, target) < ssim(pred, target, window="uniform7")  # the box window flatters
    y_wang = structural_similarity(_luma(target), _luma(pred), data_range=255, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
    assert ssim_y(pred, target) == pytest.approx(y_wang, abs=1e-9)
    with pytest.raises(ValueError, match="uniform7"):
        ssim(pred, target, window="box")


def test_ssim_matches_torchmetrics_on_the_valid_region() -> None:
    """torchmetrics' SSIM (Gaussian 11, sigma 1.5) averages a reflect-padded full-size map; over the
    pixels whose window lies inside the image -- Wang et al.'s 'valid' region -- it must agree."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")
    from instructsd.eval.metrics import _luma, ssim_y

    pred, target = _smooth_pair()

    def tensor(a: np.ndarray):
        a = a if a.ndim == 3 else a[..., None]
        return torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None]

    for ours, a, b in ((ssim(pred, target), pred, target), (ssim_y(pred, target), _luma(pred), _luma(target))):
        _, full = tm.structural_similarity_index_measure(tensor(a), tensor(b), data_range=255.0, gaussian_kernel=True,
                                                         sigma=1.5, kernel_size=11, k1=0.01, k2=0.03,
                                                         return_full_image=True)
        assert ours == pytest.approx(float(full[..., 5:-5, 5:-5].mean()), abs=1e-9)


def test_ssim_on_images_smaller_than_the_window() -> None:
    """Under 11 px a side the Gaussian is cut to the largest odd window that fits (sigma kept)."""
    from instructsd.eval.metrics import _ssim_window

    weights, norm = _ssim_window("gaussian", 8)
    assert len(weights) == 7 and weights.sum() == pytest.approx(1.0) and norm == 1.0
    assert weights[3] == weights.max() and weights[0] == pytest.approx(weights[3] * math.exp(-9 / (2 * 1.5**2)))
    assert len(_ssim_window("gaussian", 40)[0]) == 11 and len(_ssim_window("uniform7", 40)[0]) == 7
    a, b = _noise(8, 9, 1), _noise(8, 9, 2)
    assert -1.0 <= ssim(a, b) <= 1.0 and ssim(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_mismatched_sizes_raise_naming_both(metric) -> None:
    with pytest.raises(ValueError, match=r"8x16.*9x16"):
        metric(_noise(16, 8), _noise(16, 9))


def test_summarize_means_intervals_and_pooled_rows() -> None:
    rows = [{"task": "denoise", "method": "model", "psnr": p, "ssim": s} for p, s in [(20, 0.5), (22, 0.7), (21, 0.6), (25, 0.9)]]
    rows += [{"task": "denoise", "method": "identity", "psnr": 15.0, "ssim": 0.3}]
    rows += [{"task": "blur", "method": "model", "psnr": 30.0, "ssim": 0.95}]
    out = summarize(rows)

    assert [(r["task"], r["method"]) for r in out] == [
        ("blur", "model"), ("denoise", "identity"), ("denoise", "model"), ("all", "identity"), ("all", "model")
    ]
    by = {(r["task"], r["method"]): r for r in out}
    model = by["denoise", "model"]
    assert model["n"] == 4
    assert model["psnr"] == pytest.approx(22.0) and model["ssim"] == pytest.approx(0.675)
    for r in out:
        for k in ("psnr", "ssim"):
            assert r[f"{k}_lo"] <= r[k] <= r[f"{k}_hi"]
    assert 20.0 <= model["psnr_lo"] < model["psnr_hi"] <= 25.0
    # n == 1: the interval collapses to the value.
    assert by["blur", "model"]["psnr_lo"] == by["blur", "model"]["psnr_hi"] == 30.0
    # "all" pools a method's examples across tasks.
    assert by["all", "model"]["n"] == 5
    assert by["all", "model"]["psnr"] == pytest.approx((20 + 22 + 21 + 25 + 30) / 5)
    # Seeded: the same rows give the same intervals.
    assert summarize(rows) == out


def _crop_rows(photos: int, crops: int, spread: float = 3.0, noise: float = 0.3, seed: int = 0) -> list[dict]:
    """Crops of photos whose scores share the photo's level: strongly correlated within a photo."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(photos):
        level = 25.0 + spread * rng.standard_normal()
        rows += [{"task": "denoise", "method": "model", "source": f"photo{p}", "psnr": level + noise * rng.standard_normal(),
                  "ssim": 0.5} for _ in range(crops)]
    return rows


def test_clustered_intervals_are_wider_than_per_crop_ones_on_correlated_crops() -> None:
    rows = _crop_rows(photos=6, crops=8)
    clustered = summarize(rows)[0]
    per_crop = summarize([{k: v for k, v in r.items() if k != "source"} for r in rows])[0]
    assert (clustered["n"], clustered["n_groups"]) == (48, 6)
    assert (per_crop["n"], per_crop["n_groups"]) == (48, 48)
    assert clustered["psnr"] == pytest.approx(per_crop["psnr"])
    width = lambda r: r["psnr_hi"] - r["psnr_lo"]  # noqa: E731
    assert width(clustered) > 2 * width(per_crop)


def test_the_bootstrap_resamples_photos_not_crops() -> None:
    """One photo of 1 crop scoring 0 and one of 99 crops scoring 1. Drawing two photos gives mean 0
    a quarter of the time, so the 2.5th percentile is exactly 0; resampling crops never gets there."""
    rows = [{"task": "t", "method": "m", "source": "a", "psnr": 0.0, "ssim": 0.0}]
    rows += [{"task": "t", "method": "m", "source": "b", "psnr": 1.0, "ssim": 1.0} for _ in range(99)]
    clustered = summarize(rows)[0]
    assert clustered["n_groups"] == 2 and clustered["psnr"] == pytest.approx(0.99)
    assert clustered["psnr_lo"] == 0.0 and clustered["psnr_hi"] == 1.0
    per_crop = summarize(rows, cluster_key="none")[0]
    assert per_crop["n_groups"] == 100 and per_crop["psnr_lo"] > 0.9
    # One photo: nothing to resample, the interval is the mean, and says it rests on one photo.
    single = summarize(rows[1:])[0]
    assert single["n_groups"] == 1 and single["psnr_lo"] == single["psnr_hi"] == 1.0


def test_summarize_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="ssim"):
        summarize([{"task": "a", "method": "m", "psnr": 1.0}])
    with pytest.raises(ValueError, match="reserved"):
        summarize([{"task": "all", "method": "m", "psnr": 1.0, "ssim": 0.1}])


# ----------------------------------------------------------------------------
# Report and grid


def _example(instruction: str, size: int = 32) -> dict:
    ims = [Image.fromarray(_noise(size, size, s)) for s in range(3)]
    return {"instruction": instruction, "images": [("input", ims[0]), ("model", ims[1]), ("ground truth", ims[2])]}


def test_write_report_contains_every_section(tmp_path) -> None:
    rows = [
        {"task": t, "method": m, "psnr": 20.0 + i + (3 if m == "model" else 0), "ssim": 0.5 + 0.01 * i}
        for t in ("denoise", "colorize") for m in ("model", "identity") for i in range(3)
    ]
    metrics = summarize(rows)
    loss = [(s, 1.0 / (s + 1) + 0.01 * (s % 3)) for s in range(200)] + [(200, float("nan"))]
    path = write_report(
        tmp_path / "run",
        title="Tiny <eval> run",
        examples={"denoise": [_example("<script>alert(1)</script>")], "colorize": [_example("make it red", 8)]},
        summary=metrics,
        loss_curve=loss,
        notes=["trained 200 steps"],
        config={"lr": 1e-4, "data": {"path": tmp_path}},
    )
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text(encoding="utf-8")

    assert "Tiny &lt;eval&gt; run" in page and "trained 200 steps" in page
    for task in ("denoise", "colorize", "all"):
        assert f"<td>{task}</td>" in page
    denoise_model = next(r for r in metrics if r["task"] == "denoise" and r["method"] == "model")
    assert f"{denoise_model['psnr']:.2f}" in page and f"{denoise_model['psnr_lo']:.2f}" in page
    assert f"{denoise_model['ssim']:.3f}" in page
    assert re.search(r'class="num best">24\.00', page)  # model beats identity on denoise PSNR
    assert "<svg" in page and "<polyline" in page and "non-finite" in page
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 6
    assert 'width="160"' in page  # 32 px and 8 px images are enlarged for viewing
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "lr: 0.0001" in page and str(tmp_path) in page
    assert not [p for p in path.parent.iterdir() if p.name != "report.html"]  # no temp file left


def test_write_report_without_optional_sections(tmp_path) -> None:
    path = write_report(tmp_path / "r.html", title="t", examples={}, summary=[])
    page = path.read_text(encoding="utf-8")
    assert path.name == "r.html" and "<svg" not in page and "No metrics" in page


@pytest.mark.parametrize("pad", [0, 2])
def test_save_grid_size(tmp_path, pad: int) -> None:
    rows = [[Image.fromarray(_noise(20, 30, r * 3 + c)) for c in range(3)] for r in range(2)]
    path = save_grid(tmp_path / "grid.png", rows, pad=pad)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (3 * 30 + 4 * pad, 2 * 20 + 3 * pad)
        assert np.array_equal(np.asarray(im)[pad : pad + 20, pad : pad + 30], np.asarray(rows[0][0]))

    labelled = save_grid(tmp_path / "labelled.png", rows, labels=["input", "model", "ground truth"], pad=pad)
    with Image.open(labelled) as im:
        assert im.width >= 3 * 30 + 4 * pad and im.height > 2 * 20 + 3 * pad
    with pytest.raises(ValueError, match="labels"):
        save_grid(tmp_path / "bad.png", rows, labels=["input"])
