"""conv_in surgery: turn a 4-channel Stable Diffusion UNet into an 8-channel InstructPix2Pix one.

InstructPix2Pix (Brooks et al. 2023, sec. 3.2) concatenates the latents of the input image to
the noisy latents, so the UNet's first convolution needs 4 extra input channels. The extra
weights start at zero so that, at step 0, the expanded model computes exactly what the
pretrained one did. The reference script re-initialises the *bias* at random, which shifts
every activation of the pretrained network; here the bias is copied too.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from instructsd.errors import InstructSDError

LATENT_CHANNELS = 4
INSTRUCT_CHANNELS = 2 * LATENT_CHANNELS  # noisy latents ‖ input-image latents


@torch.no_grad()
def expand_conv_in(unet: UNet2DConditionModel, in_channels: int = INSTRUCT_CHANNELS) -> UNet2DConditionModel:
    """Grow ``unet.conv_in`` to ``in_channels`` inputs in place; new channels are zero.

    The old weight and bias are kept, so with zero image latents the output is unchanged.
    """
    old = unet.conv_in
    if old.in_channels > in_channels:
        raise InstructSDError(
            f"cannot shrink conv_in from {old.in_channels} to {in_channels} input channels"
        )
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    if old.bias is not None:
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def ensure_instruct_unet(unet: UNet2DConditionModel) -> tuple[UNet2DConditionModel, bool]:
    """Return an 8-channel UNet and whether conv_in was expanded.

    Decided from the checkpoint itself: 8 channels is an InstructPix2Pix model, fine-tuned
    as is; 4 is plain Stable Diffusion, expanded. Every process calls this on its own copy of
    the same weights, so all ranks agree without communication.
    """
    channels = unet.config.in_channels
    if channels == INSTRUCT_CHANNELS:
        return unet, False
    if channels == LATENT_CHANNELS:
        return expand_conv_in(unet), True
    raise InstructSDError(
        f"the UNet has {channels} input channels; instructsd needs a Stable Diffusion (4) or "
        f"InstructPix2Pix (8) UNet — inpainting UNets (9) are not supported"
    )
