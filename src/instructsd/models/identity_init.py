"""Identity initialisation: an 8-channel UNet that starts out returning its input image.

An instruction-editing model should start from "change nothing": most of every target is
the input. A stock ``UNet2DConditionModel`` with default init is very far from that and, at
tiny sizes, takes thousands of steps just to learn to copy colours and contrast back (measured
in benchmarks/RESULTS.md). InstructPix2Pix avoids the problem by starting from Stable
Diffusion; a model built from nothing has no such luck. This module sets the weights of a
fresh UNet (same architecture, nothing added, still loadable by stock diffusers) so that,
for ``prediction_type="sample"``, its prediction of the clean latents is the (scaled)
input-image latents:

- every residual branch ends in zeros (``ResnetBlock2D.conv2``, ``Transformer2DModel.proj_out``,
  as in ReZero/Fixup and ControlNet's zero convolutions), so each block starts as identity;
- ``conv_in`` copies the image latents (channels 4-7) into feature channels 0-3, their
  negatives into 4-7, and puts large constants of both signs in the rest;
- the full-resolution up-block's shortcuts pick the skip connection from ``conv_in``;
- with one GroupNorm group (``norm_num_groups=1``) the constants dominate the statistics of
  ``conv_norm_out``, so it is an almost fixed affine map; a large bias keeps SiLU in its
  linear range, the ± copies cancel that bias in ``conv_out``.

Gradients still reach every weight (zero weights with non-zero inputs get gradients), so
training starts from identity and learns the edit as a change to it.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from instructsd.errors import InstructSDError

CONSTANT = 10.0
"""Magnitude of the constant feature channels (dominates the GroupNorm statistics)."""
SILU_SHIFT = 10.0
"""Bias that keeps SiLU(x + shift) ≈ x + shift for latents of a few units."""


@torch.no_grad()
def identity_init(unet: UNet2DConditionModel, scaling_factor: float = 1.0) -> UNet2DConditionModel:
    """Set ``unet``'s weights in place so it predicts ``scaling_factor`` × its image latents."""
    cfg = unet.config
    width, latent = cfg.block_out_channels[0], cfg.out_channels
    if cfg.in_channels != 2 * latent:
        raise InstructSDError(f"identity init needs an InstructPix2Pix UNet ({2 * latent} input channels), got {cfg.in_channels}")
    if cfg.norm_num_groups != 1:
        raise InstructSDError(f"identity init needs norm_num_groups=1 (got {cfg.norm_num_groups}): with more groups the "
                              "output GroupNorm removes each image's own colour statistics")
    if width < 2 * latent + 2:
        raise InstructSDError(f"identity init needs a first width of at least {2 * latent + 2}, got {width}")

    for module in unet.modules():  # every residual branch starts at zero
        if hasattr(module, "conv2") and hasattr(module, "conv_shortcut"):
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
        if hasattr(module, "proj_out") and hasattr(module, "transformer_blocks"):
            module.proj_out.weight.zero_()
            module.proj_out.bias.zero_()

    centre = cfg.conv_in_kernel // 2
    unet.conv_in.weight.zero_()
    unet.conv_in.bias.zero_()
    for c in range(latent):
        unet.conv_in.weight[c, latent + c, centre, centre] = 1.0
        unet.conv_in.weight[latent + c, latent + c, centre, centre] = -1.0
    rest = width - 2 * latent
    signs = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(rest)])
    if rest % 2:
        signs[-1] = 0.0  # keep the constants' mean at zero
    unet.conv_in.bias[2 * latent:] = CONSTANT * signs

    # The full-resolution up block: each resnet's shortcut passes its skip input through.
    last = unet.up_blocks[-1]
    for resnet in last.resnets:
        if resnet.conv_shortcut is None:
            raise InstructSDError("identity init expects concatenating skip connections in the last up block")
        w = resnet.conv_shortcut.weight
        w.zero_()
        resnet.conv_shortcut.bias.zero_()
        skip = w.shape[1] - width  # the skip channels come last in the concatenation
        for c in range(width):
            w[c, skip + c, 0, 0] = 1.0

    # conv_norm_out: the normalised features times the (nearly constant) group std, plus the shift.
    n = width
    sigma = float(torch.sqrt((signs**2).sum() * CONSTANT**2 / n))
    unet.conv_norm_out.weight.fill_(sigma)
    unet.conv_norm_out.bias.zero_()
    unet.conv_norm_out.bias[: 2 * latent] = SILU_SHIFT

    out_centre = unet.conv_out.weight.shape[-1] // 2
    unet.conv_out.weight.zero_()
    unet.conv_out.bias.zero_()
    for c in range(latent):
        unet.conv_out.weight[c, c, out_centre, out_centre] = 0.5 * scaling_factor
        unet.conv_out.weight[c, latent + c, out_centre, out_centre] = -0.5 * scaling_factor
    return unet
