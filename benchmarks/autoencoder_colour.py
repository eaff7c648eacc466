"""The tiny factor-1 autoencoder on unseen colour photos: GroupNorm groups 32 vs 1
(benchmarks/RESULTS.md, "Tiny autoencoder on unseen colour photos").

Fits `fit_autoencoder` (the pre-training recipe's stage, same steps, anchor and crop size) on the
extended photo set minus the recipe's held-out groups, then reconstructs 256 random 32 px crops of
the held-out colour photos (chelsea, coffee, motorcycle L+R, rocket).

    python benchmarks/autoencoder_colour.py 32     # one group per channel: the first base's autoencoder
    python benchmarks/autoencoder_colour.py 1      # one group: the recipe's default since this run
"""

import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL

from instructsd.data.samples import GROUPS, sample_images
from instructsd.models.autoencoder import _batch, fit_autoencoder
from instructsd.recipes.pretrain_tiny import HOLDOUT, PretrainConfig

groups = int(sys.argv[1])
recipe = PretrainConfig()
photos = sample_images(recipe.photos)
held = [name for name, _ in photos if GROUPS.get(name, name) in HOLDOUT]
train = [image for name, image in photos if name not in held]
torch.manual_seed(recipe.seed)
vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                    up_block_types=("UpDecoderBlock2D",), block_out_channels=tuple(recipe.vae_channels), latent_channels=4,
                    layers_per_block=1, norm_num_groups=groups, sample_size=recipe.size, mid_block_add_attention=False)
tick = time.time()
stats = fit_autoencoder(vae, train, steps=recipe.vae_steps, size=recipe.size, seed=recipe.seed,
                        anchor_weight=recipe.vae_anchor, progress=False)
seconds = time.time() - tick
with torch.no_grad():
    x = _batch([np.asarray(image.convert("RGB")) for name, image in photos if name in held], recipe.size, 256,
               np.random.default_rng(5))
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    held_psnr = 10 * np.log10(4 / ((recon - x) ** 2).mean().item())
print(f"groups {groups}: {recipe.vae_steps} steps in {seconds:.0f} s; training crops {stats['psnr']:.1f} dB, "
      f"held-out colour photos ({', '.join(held)}) {held_psnr:.1f} dB")
