"""The InstructPix2Pix loss: conditioning dropout, image latents, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from instructsd.models.loading import load_components
from instructsd.train.objective import (
    DropoutProbs,
    conditioning_dropout,
    encode_pair,
    instruct_pix2pix_loss,
    min_snr_weights,
    training_target,
)


def test_each_dropout_case_occurs_at_its_configured_rate():
    probs = DropoutProbs(text=0.1, image=0.2, both=0.3)
    n = 200_000
    drop_text, drop_image = conditioning_dropout(n, probs, torch.Generator().manual_seed(0))
    rates = {
        "text only": (drop_text & ~drop_image).float().mean().item(),
        "image only": (~drop_text & drop_image).float().mean().item(),
        "both": (drop_text & drop_image).float().mean().item(),
        "neither": (~drop_text & ~drop_image).float().mean().item(),
    }
    expected = {"text only": 0.1, "image only": 0.2, "both": 0.3, "neither": 0.4}
    for case, rate in rates.items():
        assert rate == pytest.approx(expected[case], abs=0.005), case


def test_dropout_is_reproducible_and_per_sample():
    probs = DropoutProbs(text=0.3, image=0.3, both=0.3)
    a = conditioning_dropout(64, probs, torch.Generator().manual_seed(7))
    b = conditioning_dropout(64, probs, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert 0 < a[0].sum() < 64  # not one decision shared by the whole batch


def test_zero_probabilities_never_drop():
    drop_text, drop_image = conditioning_dropout(10_000, DropoutProbs(text=0, image=0, both=0), torch.Generator().manual_seed(0))
    assert not drop_text.any() and not drop_image.any()


@pytest.fixture(scope="module")
def parts(tiny_model):
    return load_components(tiny_model)


def test_image_latents_are_the_unscaled_mode_and_targets_are_scaled_samples(tiny_model):
    # A fresh VAE: the scaling factor is changed here and must not leak into other tests.
    vae: AutoencoderKL = load_components(tiny_model).vae
    vae.register_to_config(scaling_factor=0.5)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    image_latents, target = encode_pair(vae, x, y, torch.Generator().manual_seed(3))
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode()
        sample = vae.encode(y).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    assert torch.allclose(image_latents, mode)
    assert torch.allclose(target, sample * 0.5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_target_follows_the_prediction_type(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    target = training_target(scheduler, latents, noise, t, prediction_type)
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {
        "epsilon": noise,
        "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents,
        "sample": latents,
    }[prediction_type]
    assert torch.allclose(target, expected, atol=1e-5)


def _manual_loss(unet, scheduler, latents, image_latents, text, null_text, seed, drop_text, drop_image):
    """The loss written out by hand for one known dropout outcome, same random draws."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    torch.rand(latents.shape[0], generator=gen)  # the dropout draw
    cond_text = null_text.expand_as(text) if drop_text else text
    cond_image = torch.zeros_like(image_latents) if drop_image else image_latents
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(torch.cat([noisy, cond_image], 1), t, encoder_hidden_states=cond_text).sample
    return F.mse_loss(pred, noise)


@pytest.mark.parametrize(
    "probs, drop_text, drop_image",
    [(DropoutProbs(text=0, image=0, both=0), False, False), (DropoutProbs(text=1, image=0, both=0), True, False),
     (DropoutProbs(text=0, image=1, both=0), False, True), (DropoutProbs(text=0, image=0, both=1), True, True)],
)
def test_loss_conditions_the_unet_as_each_dropout_case_says(parts, probs, drop_text, drop_image):
    unet: UNet2DConditionModel = parts.unet.eval()
    scheduler = parts.scheduler
    torch.manual_seed(0)
    latents, image_latents = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    dim = unet.config.cross_attention_dim
    text, null_text = torch.randn(2, 77, dim), torch.randn(1, 77, dim)
    with torch.no_grad():
        loss = instruct_pix2pix_loss(unet, scheduler, latents, image_latents, text, null_text, probs, torch.Generator().manual_seed(5))
        manual = _manual_loss(unet, scheduler, latents, image_latents, text, null_text, 5, drop_text, drop_image)
        other = _manual_loss(unet, scheduler, latents, image_latents, text, null_text, 5, not drop_text, drop_image)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert loss.item() != pytest.approx(other.item(), rel=1e-5)  # the case actually matters


@pytest.mark.parametrize("prediction_type, expected", [
    ("epsilon", lambda snr, g: torch.clamp(snr, max=g) / snr),
    ("v_prediction", lambda snr, g: torch.clamp(snr, max=g) / (snr + 1)),
])
def test_min_snr_weights_follow_hang_et_al(prediction_type, expected):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 100, 999])
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weights = min_snr_weights(scheduler, t, 5.0, prediction_type)
    assert torch.allclose(weights, expected(snr, 5.0))
    if prediction_type == "epsilon":
        assert weights[0] < 1 and weights[2] == pytest.approx(1.0)  # low-noise steps down-weighted, high-noise kept


def test_snr_weighting_and_noise_offset_change_the_loss_only_when_asked(parts):
    unet, scheduler = parts.unet.eval(), parts.scheduler
    torch.manual_seed(0)
    latents, image_latents = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    dim = unet.config.cross_attention_dim
    text, null_text = torch.randn(2, 77, dim), torch.randn(1, 77, dim)
    probs = DropoutProbs(text=0, image=0, both=0)

    def loss(**kw):
        with torch.no_grad():
            return instruct_pix2pix_loss(unet, scheduler, latents, image_latents, text, null_text, probs,
                                         torch.Generator().manual_seed(5), **kw).item()

    plain = loss()
    assert loss(noise_offset=0.0) == plain and loss(snr_gamma=None) == plain
    assert loss(noise_offset=0.1) != pytest.approx(plain, rel=1e-6)
    assert loss(snr_gamma=5.0) != pytest.approx(plain, rel=1e-6)
    assert loss(snr_gamma=1e9) == pytest.approx(plain, rel=1e-5)  # γ above every SNR: weights are 1 for ε


def test_dropout_probs_are_named_never_positional():
    # Three floats of one type: a positional swap would pass every other test (issue 13).
    with pytest.raises(TypeError):
        DropoutProbs(0.1, 0.2, 0.3)
