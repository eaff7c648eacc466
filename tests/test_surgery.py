"""conv_in surgery: a 4-channel Stable Diffusion UNet becomes an 8-channel one losslessly."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from instructsd.errors import InstructSDError
from instructsd.models.surgery import ensure_instruct_unet, expand_conv_in


def _unet(in_channels=4):
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def test_weight_and_bias_are_kept_and_new_channels_are_zero():
    unet = _unet()
    # A non-zero bias, so "kept" and "re-initialised" cannot coincide.
    torch.nn.init.normal_(unet.conv_in.bias)
    old_w, old_b = unet.conv_in.weight.clone(), unet.conv_in.bias.clone()
    expand_conv_in(unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], old_w)
    assert torch.equal(unet.conv_in.bias, old_b)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0


def test_expanded_model_matches_the_original_when_image_latents_are_zero():
    unet = _unet()
    torch.nn.init.normal_(unet.conv_in.bias)
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.randn(2, 7, 16)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
        expanded, changed = ensure_instruct_unet(unet)
        after = expanded(torch.cat([x, torch.zeros_like(x)], 1), t, encoder_hidden_states=text).sample
    assert changed
    assert torch.allclose(before, after, atol=1e-6)


def test_instruct_checkpoints_are_kept_as_is():
    unet = _unet(8)
    weight = unet.conv_in.weight.clone()
    same, changed = ensure_instruct_unet(unet)
    assert not changed and same is unet and torch.equal(same.conv_in.weight, weight)


def test_other_channel_counts_are_refused():
    with pytest.raises(InstructSDError, match="9 input channels"):
        ensure_instruct_unet(_unet(9))
