"""Fit a tiny AutoencoderKL to photos, so a from-scratch tiny model has a usable latent space.

Real checkpoints ship a trained VAE; a tiny model built from code does not, and a random
decoder turns every latent into grey mush whatever the UNet learns. A few CPU minutes of

    L = |x − D(z)|₁ + β · KL(q(z|x) ‖ N(0, I)),   z ~ q(z|x)      (Kingma & Welling 2014)

give a decoder good enough to judge edits by. With ``anchor_weight`` > 0 the latent means are
also pulled towards the image itself (RGB and its grey level, average-pooled to the latent
grid): ``+ λ · |μ(x) − A x|²``. That keeps the latent space image-like, as Stable
Diffusion's is, so a squared error between latents behaves like one between pixels and
"return the input" is a simple map for the UNet (see models/identity_init.py). Afterwards the scaling factor is set to
1 / std(z), as Stable Diffusion did (Rombach et al. 2022, sec. 4.3.2), so the diffusion
model sees unit-variance latents.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from tqdm.auto import tqdm


def _batch(images: list[np.ndarray], size: int, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random square crops with random flips, as a [-1, 1] tensor."""
    crops = []
    for _ in range(batch_size):
        im = images[int(rng.integers(len(images)))]
        h, w = im.shape[:2]
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = im[top : top + size, left : left + size]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    array = np.stack(crops).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def image_anchor(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The image as latent-shaped channels: R, G, B, grey (then zeros), pooled to ``like``'s grid."""
    grey = x.mean(dim=1, keepdim=True)
    channels = torch.cat([x, grey] + [torch.zeros_like(grey)] * max(0, like.shape[1] - 4), dim=1)[:, : like.shape[1]]
    return torch.nn.functional.adaptive_avg_pool2d(channels, like.shape[-2:])


def fit_autoencoder(
    vae: AutoencoderKL,
    images: list[Image.Image],
    *,
    steps: int = 600,
    size: int = 64,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    anchor_weight: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``vae`` in place on crops of ``images``; returns the final PSNR and scaling factor."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    arrays = [np.asarray(im.convert("RGB")) for im in images if min(im.size) >= size]
    if not arrays:
        raise ValueError(f"fit_autoencoder needs images of at least {size} px")
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        x = _batch(arrays, size, batch_size, rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = (recon - x).abs().mean()
        loss = l1 + kl_weight * posterior.kl().mean()
        if anchor_weight > 0:
            loss = loss + anchor_weight * (posterior.mean - image_anchor(x, posterior.mean)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(l1=f"{l1.item():.4f}")
    vae.eval().requires_grad_(False)

    with torch.no_grad():
        x = _batch(arrays, size, 64, np.random.default_rng(seed + 1))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample.clamp(-1, 1)
        mse = ((recon - x) / 2).pow(2).mean().item()
        std = posterior.sample().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return {"psnr": 10 * np.log10(1.0 / max(mse, 1e-10)), "scaling_factor": 1.0 / std, "steps": steps}
