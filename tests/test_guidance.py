"""Guidance is never silently ignored (issue 11, item 7).

Stock diffusers guides only when text guidance > 1 and image guidance >= 1. instructsd's one
edit function applies eq. 3 of InstructPix2Pix at every finite scale >= 0, leaves the stock
path untouched where the stock pipeline already guides, and every entry point refuses NaN,
infinities and negative scales with the guidance named.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.config import load_config
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.edit.guidance import guided_at_any_scale, needs_forced_guidance, stock_guides
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig

STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_model):
    pipe = load_pipeline(tiny_model, device="cpu")
    # A deterministic sampler, so edit_images and a direct stock call can be compared exactly.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def image():
    return photo(0, (32, 32))


def ours(pipe, image, image_guidance, guidance):
    settings = EditSettings(num_inference_steps=STEPS, image_guidance_scale=image_guidance, guidance_scale=guidance,
                            scheduler="ddim")
    (out,) = edit_images(pipe, [image], ["Cartoonize the image."], settings, seeds=[0])
    return np.asarray(out, np.int16)


def stock(pipe, image, image_guidance, guidance):
    out = pipe(prompt=["Cartoonize the image."], image=[image], num_inference_steps=STEPS,
               image_guidance_scale=image_guidance, guidance_scale=guidance,
               generator=[torch.Generator("cpu").manual_seed(0)]).images[0]
    return np.asarray(out, np.int16)


def test_the_stock_rule_is_what_instructsd_corrects(pipe, image):
    # If diffusers ever guides at every scale itself, this fails and the forcing can go.
    assert np.array_equal(stock(pipe, image, 0.9, 7.0), stock(pipe, image, 0.9, 3.0))
    assert stock_guides(1.0, 1.5) and not stock_guides(0.9, 7.0) and not stock_guides(1.5, 1.0)
    assert not needs_forced_guidance(1.0, 1.0) and needs_forced_guidance(0.9, 7.0) and needs_forced_guidance(2.0, 1.0)


def test_text_guidance_matters_below_image_guidance_1(pipe, image):
    a, b = ours(pipe, image, 0.9, 7.0), ours(pipe, image, 0.9, 3.0)
    assert np.abs(a - b).max() > 0
    # And image guidance matters at text guidance 1, where the stock pipeline drops it too.
    assert np.abs(ours(pipe, image, 2.0, 1.0) - ours(pipe, image, 1.0, 1.0)).max() > 0
    assert type(pipe) is StableDiffusionInstructPix2PixPipeline  # given its class back


@pytest.mark.parametrize("image_guidance, guidance", [(1.5, 7.0), (1.0, 1.5), (2.0, 3.0), (1.0, 1.0)])
def test_where_the_stock_pipeline_already_guides_edits_are_bit_identical(pipe, image, image_guidance, guidance):
    assert np.array_equal(ours(pipe, image, image_guidance, guidance), stock(pipe, image, image_guidance, guidance))


def test_the_noise_prediction_is_eq_3(pipe, image, monkeypatch):
    """At (0.9, 3) the sampler is fed uncond + s_T (text - image) + s_I (image - uncond)."""
    unet_out, fed = [], []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: unet_out.append(out[0].detach().clone()))
    real_step = pipe.scheduler.step

    def step(model_output, *args, **kwargs):
        fed.append(model_output.detach().clone())
        return real_step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", step)
    try:
        ours(pipe, image, 0.9, 3.0)
    finally:
        hook.remove()
    assert len(unet_out) == len(fed) == STEPS
    for predictions, noise in zip(unet_out, fed):
        assert predictions.shape[0] == 3  # text+image, image only, neither
        text, image_only, uncond = predictions.chunk(3)
        assert torch.equal(noise, uncond + 3.0 * (text - image_only) + 0.9 * (image_only - uncond))


def test_the_pipeline_gets_its_class_back_after_an_error(pipe):
    with pytest.raises(RuntimeError):
        with guided_at_any_scale(pipe, 0.5, 0.5):
            assert pipe.do_classifier_free_guidance and isinstance(pipe, StableDiffusionInstructPix2PixPipeline)
            raise RuntimeError("boom")
    assert type(pipe) is StableDiffusionInstructPix2PixPipeline
    pipe._guidance_scale, pipe._image_guidance_scale = 3.0, 0.9
    assert pipe.do_classifier_free_guidance is False  # the stock property again


@pytest.mark.parametrize("kwargs, message", [
    ({"image_guidance_scale": math.nan}, r"^image guidance \(image_guidance_scale\) must be a finite number >= 0"),
    ({"guidance_scale": -1.0}, r"^text guidance \(guidance_scale\) must be a finite number >= 0 .*got -1.0$"),
    ({"guidance_scale": math.inf}, r"^text guidance \(guidance_scale\)"),
])
def test_edit_settings_refuse_scales_eq_3_cannot_use(kwargs, message):
    with pytest.raises(InstructSDError, match=message):
        EditSettings(**kwargs)
    EditSettings(image_guidance_scale=0.0, guidance_scale=0.5)  # meaningful in eq. 3: accepted


# --- every entry point ------------------------------------------------------------------------

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_cli_edit_applies_low_scales_and_refuses_bad_ones(tiny_model, tmp_path, capsys):
    source = tmp_path / "in.png"
    photo(1, (32, 32)).save(source)
    base = ["edit", "--model", tiny_model, "--image", str(source), "--instruction", "x", "--steps", "2",
            "--scheduler", "ddim"]
    for g in ("7", "3"):
        assert run([*base, "--out", str(tmp_path / f"g{g}.png"), "--image-guidance", "0.9", "--guidance", g]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"g{g}.png"), np.int16) for g in ("7", "3"))
    assert np.abs(a - b).max() > 0
    capsys.readouterr()
    assert run([*base, "--out", str(tmp_path / "bad.png"), "--image-guidance", "nan"]) == 1
    assert "image guidance (image_guidance_scale) must be a finite number >= 0" in one_error_line(capsys)
    assert run([*base, "--out", str(tmp_path / "bad.png"), "--guidance=-2"]) == 1
    assert "text guidance (guidance_scale)" in one_error_line(capsys)
    for sweep, named in [("image_guidance=1.0,nan", "finite numbers"), ("guidance=3,-1", "text guidance (guidance_scale)"),
                         ("steps=2,inf", "finite numbers")]:
        assert run([*base, "--out", str(tmp_path / "sweep"), "--sweep", sweep]) == 1
        err = one_error_line(capsys)
        assert f"bad --sweep '{sweep}'" in err and named in err
    assert not (tmp_path / "sweep").exists()


def test_training_validation_settings_fail_at_start(tmp_path, capsys):
    with pytest.raises(InstructSDError, match=r"invalid config: image guidance \(validation.image_guidance_scale\) must be"):
        load_config(TrainConfig, "tiny-cpu", ["validation.image_guidance_scale=-0.5"])
    with pytest.raises(InstructSDError, match="config key 'validation.guidance_scale': expected a finite number"):
        load_config(TrainConfig, "tiny-cpu", ["validation.guidance_scale=nan"])
    with pytest.raises(InstructSDError, match="validation.num_inference_steps must be >= 1"):
        load_config(TrainConfig, "tiny-cpu", ["validation.num_inference_steps=0"])
    cfg = load_config(TrainConfig, "tiny-cpu", ["validation.image_guidance_scale=0.9", "validation.guidance_scale=3"])
    assert (cfg.validation.image_guidance_scale, cfg.validation.guidance_scale) == (0.9, 3.0)
    # Through the CLI: one line, before any model or dataset is opened.
    assert run(["train", "tiny-cpu", f"dataset={tmp_path / 'none'}", "validation.guidance_scale=-1"]) == 1
    assert "text guidance (validation.guidance_scale)" in one_error_line(capsys)


def test_eval_and_compare_check_guidance_before_loading_anything(tmp_path, capsys):
    missing = str(tmp_path / "no-such-dataset")
    assert run(["eval", "--model", "no-such-model", "--dataset", missing, "--image-guidance", "nan"]) == 1
    assert "image guidance (image_guidance_scale)" in one_error_line(capsys)
    assert run(["compare", "--models", "no-such-model", "--dataset", missing, "--guidance=-3",
                "--clip", "none", "--dino", "none", "--lpips", "none"]) == 1
    assert "text guidance (guidance_scale)" in one_error_line(capsys)
    assert run(["compare", "--models", "no-such-model", "--dataset", missing, "--sweep", "1.0,-1",
                "--clip", "none", "--dino", "none", "--lpips", "none"]) == 1
    assert "image-guidance sweep: image guidance (image_guidance_scale) must be" in one_error_line(capsys)

    from instructsd.eval.compare import run_compare
    from instructsd.recipes.experiment import load_experiment

    with pytest.raises(InstructSDError, match="image-guidance sweep: .*got nan"):
        run_compare({"m": "no-such-model"}, missing, tmp_path / "out", sweep=[1.0, math.nan], progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InstructSDError, match=r"invalid experiment config: image guidance \(sweep\)"):
        load_experiment("ip2p-vs-sd", ["sweep=[1.0, -1]"])


def test_demo_applies_every_slider_value_and_refuses_nan(pipe, tiny_model, tmp_path):
    gr = pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'instructsd[demo]'")
    from instructsd.app.demo import DemoLimits, build_demo, make_edit_fn

    upload = tmp_path / "in.png"
    photo(2, (32, 32)).save(upload)
    limits = DemoLimits(max_side=32, max_steps=2)
    edit = make_edit_fn(pipe, tiny_model, tmp_path, limits)
    _, (first,) = edit(str(upload), "x", 2, 0.9, 7.0, "ddim", 0, 1, False)
    _, (second,) = edit(str(upload), "x", 2, 0.9, 3.0, "ddim", 0, 1, False)
    assert np.abs(np.asarray(Image.open(first), np.int16) - np.asarray(Image.open(second), np.int16)).max() > 0
    for args, named in [((2, math.nan, 7.0), "image guidance"), ((2, 1.5, math.nan), "Text guidance"),
                        ((2, 1.5, -1.0), "text guidance"), ((math.nan, 1.5, 7.0), "Steps")]:
        with pytest.raises(gr.Error, match=f"(?i){named}"):
            edit(str(upload), "x", *args, "ddim", 0, 1, False)
    with pytest.raises(gr.Error, match="Seed must be a finite number"):
        edit(str(upload), "x", 2, 1.5, 7.0, "ddim", math.nan, 1, False)
    demo = build_demo(pipe, tiny_model, tmp_path / "app", limits)
    sliders = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Slider)}
    image_slider = next(s for label, s in sliders.items() if label.startswith("Image guidance"))
    text_slider = next(s for label, s in sliders.items() if label.startswith("Text guidance"))
    assert image_slider.minimum == 0 and text_slider.minimum == 0  # below 1 is applied now, so offered
