"""Tiny model folders load in stock diffusers pipelines; broken folders fail clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from PIL import Image

from instructsd.cli import run
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.models.loading import load_components


def test_stock_instruct_pix2pix_pipeline_loads_and_edits(tiny_model):
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model, safety_checker=None)
    image = Image.new("RGB", (40, 32), (200, 40, 40))
    out = pipe("denoise the image", image=image, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (40, 32)


def test_four_channel_model_is_a_plain_stable_diffusion_pipeline(tiny_sd_model):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_model, safety_checker=None)
    assert pipe.unet.config.in_channels == 4
    out = pipe("a cat", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (32, 32)
    with pytest.raises(InstructSDError, match="4-channel UNet"):
        load_pipeline(tiny_sd_model, device="cpu")


def test_edit_depends_only_on_each_images_seed(tiny_model):
    pipe = load_pipeline(tiny_model, device="cpu")
    a, b = Image.new("RGB", (32, 32), (10, 200, 30)), Image.new("RGB", (32, 32), (90, 20, 160))
    settings = EditSettings(num_inference_steps=3)
    alone = edit_images(pipe, [b], ["cartoonize the image"], settings, seeds=[11])[0]
    batched = edit_images(pipe, [a, b], ["denoise the image", "cartoonize the image"], settings, seeds=[5, 11], batch_size=2)[1]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(batched, dtype=int)).max() <= 2
    other_seed = edit_images(pipe, [b], ["cartoonize the image"], settings, seeds=[12])[0]
    assert not np.array_equal(np.asarray(other_seed), np.asarray(alone))


def test_missing_component_is_named(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InstructSDError, match=r"missing its 'vae' component"):
        load_components(broken)


def test_init_tiny_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert run(["model", "init-tiny", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"


def test_text_encoder_fit_separates_edits_a_random_encoder_blurs_and_leaves_it_frozen(tiny_model):
    from transformers import CLIPTextModel, CLIPTokenizer

    from instructsd.data.tasks import edit_class
    from instructsd.models.text_fit import fit_text_encoder

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_model, subfolder="text_encoder")
    brighter = ["Make it one stop brighter.", "Raise the exposure by one stop.", "One stop brighter, please."]
    darker = ["Make it one stop darker.", "Lower the exposure by one stop.", "One stop darker, please."]
    labels = [edit_class("exposure", '{"op": "exposure", "ev": 1.0}')] * 3 + [edit_class("exposure", '{"op": "exposure", "ev": -1.0}')] * 3
    assert labels[0] == "exposure|exposure=1.0" != labels[-1]  # the amount is part of the edit
    # A compound edit names every amount; a parameter no wording states (grain's noise seed) is not part of it.
    assert edit_class("photo_compound", '[{"op": "exposure", "ev": 1.0}, {"op": "saturation", "factor": 1.5}]') \
        == "photo_compound|exposure=1.0,saturation=1.5"
    assert edit_class("grain", '{"op": "grain", "sigma": 8.0, "seed": 1}') == edit_class("grain", '{"op": "grain", "sigma": 8.0, "seed": 2}')
    assert edit_class("denoise") == "denoise"

    def gap() -> float:  # cosine within a class minus between the classes, over the 77 states the UNet reads
        with torch.no_grad():
            ids = tokenizer(brighter + darker, padding="max_length", max_length=77, return_tensors="pt").input_ids
            h = torch.nn.functional.normalize(encoder(input_ids=ids).last_hidden_state.flatten(1), dim=1)
        sim = h @ h.T
        return float((sim[:3, :3].mean() + sim[3:, 3:].mean()) / 2 - sim[:3, 3:].mean())

    before = gap()
    assert before < 0.2  # random: the two edits' 77 states are nearly as alike across as within (measured 0.01)
    stats = fit_text_encoder(encoder, tokenizer, brighter + darker, labels, steps=40, batch_size=6, progress=False)
    assert stats["classes"] == 2 and stats["prompts"] == 6
    assert stats["accuracy_pooled"] == stats["accuracy_mean"] == 1.0
    assert gap() > 0.5  # fitted: measured 1.29
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    with pytest.raises(ValueError, match="one label per prompt"):
        fit_text_encoder(encoder, tokenizer, brighter, labels, steps=1, progress=False)
