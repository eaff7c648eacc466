"""What makes a tiny instruction-following diffusion model learn fast? (issue #7)

Each variant pre-trains a tiny base for a few CPU minutes with `instructsd.recipes.pretrain_tiny`'s
stages (same data, same held-out photos), then scores it on the held-out photos under several
inference settings. One JSON line per (variant, settings) goes to
benchmarks/results/tiny_recipe.jsonl; the table is printed.

    python benchmarks/tiny_recipe.py --variant sample-f1-32 --steps 400
    python benchmarks/tiny_recipe.py --list

Run variants one after another on a quiet machine: they share the CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from instructsd.edit.editor import EditSettings, load_pipeline
from instructsd.data.load import load_split
from instructsd.recipes.pretrain_tiny import PretrainConfig, build_data, build_init_model, score, train_config
from instructsd.train.loop import train

# The explored starting point (stock init, plain autoencoder, six tasks, lr 1e-3), pinned so the
# table in benchmarks/RESULTS.md reproduces whatever the shipped recipe's defaults become.
BASE = PretrainConfig(tasks=("denoise", "lowlight", "deblur", "derain", "dehaze", "jpeg"), unet_norm_groups=None,
                      vae_norm_groups=None,
                      identity_init=False, vae_anchor=0.0,
                      train={**PretrainConfig().train, "learning_rate": 1e-3})
VARIANTS = {
    # name: (PretrainConfig changes, TrainConfig overrides)
    "eps-f2-64": (dict(size=64, vae_channels=(16, 32)), {"prediction_type": "epsilon"}),
    "sample-f2-64": (dict(size=64, vae_channels=(16, 32)), {"prediction_type": "sample"}),
    "eps-f1-32": (dict(), {"prediction_type": "epsilon"}),
    "v-f1-32": (dict(), {"prediction_type": "v_prediction"}),
    "sample-f1-32": (dict(), {"prediction_type": "sample"}),
    "sample-f1-32-ema": (dict(), {"prediction_type": "sample", "use_ema": True, "ema_decay": 0.999}),
    "sample-f1-32-lr3e-4": (dict(), {"prediction_type": "sample", "learning_rate": 3e-4}),
    "sample-f1-32-const": (dict(), {"prediction_type": "sample", "lr_scheduler": "constant_with_warmup"}),
    "sample-f1-32-wide": (dict(unet_channels=(64, 128, 128)), {"prediction_type": "sample"}),
    "sample-f1-32-narrow": (dict(unet_channels=(32, 32, 64)), {"prediction_type": "sample"}),
    "sample-f1-32-g8": (dict(unet_norm_groups=8), {"prediction_type": "sample"}),
    "sample-f1-32-g1": (dict(unet_norm_groups=1), {"prediction_type": "sample"}),
    "eps-f1-32-g8": (dict(unet_norm_groups=8), {"prediction_type": "epsilon"}),
    "sample-id": (dict(unet_norm_groups=1, identity_init=True), {"prediction_type": "sample"}),
    "sample-id-anchor": (dict(unet_norm_groups=1, identity_init=True, vae_anchor=1.0), {"prediction_type": "sample"}),
    "sample-anchor": (dict(vae_anchor=1.0), {"prediction_type": "sample"}),
    "sample-id-lr3e-4": (dict(unet_norm_groups=1, identity_init=True), {"prediction_type": "sample", "learning_rate": 3e-4}),
    "sample-id-f2-64": (dict(unet_norm_groups=1, identity_init=True, size=64, vae_channels=(16, 32)), {"prediction_type": "sample"}),
    "sample-f1-32-snr": (dict(), {"prediction_type": "sample", "snr_gamma": 5.0}),
}
SETTINGS = {
    "post (euler_a 20, 1.5/7)": EditSettings(),
    "ddim 20, 1.5/7": EditSettings(scheduler="ddim"),
    "ddim 20, 1.5/3": EditSettings(scheduler="ddim", guidance_scale=3.0),
    "ddim 20, no cfg": EditSettings(scheduler="ddim", guidance_scale=1.0, image_guidance_scale=1.0),
    "ddim 20, 1.0/3": EditSettings(scheduler="ddim", image_guidance_scale=1.0, guidance_scale=3.0),
    "ddim 20, 1.0/7": EditSettings(scheduler="ddim", image_guidance_scale=1.0, guidance_scale=7.0),
    "ddim 5, 1.5/3": EditSettings(scheduler="ddim", num_inference_steps=5, guidance_scale=3.0),
}


def reuse_autoencoder(reference: Path, init: Path, cfg) -> None:
    """A fresh seeded UNet of ``cfg``'s shape beside ``reference``'s fitted autoencoder and text encoder."""
    import shutil

    from diffusers import UNet2DConditionModel

    from instructsd.models.loading import load_components
    from instructsd.models.tiny import save_pipeline

    parts = load_components(reference)
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel.from_config({**parts.unet.config, "block_out_channels": tuple(cfg.unet_channels),
                                             "norm_num_groups": cfg.unet_norm_groups or min(32, cfg.unet_channels[0])})
    if cfg.identity_init:
        from instructsd.models.identity_init import identity_init

        identity_init(unet, scaling_factor=parts.vae.config.scaling_factor)
    save_pipeline(init, unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.scheduler)
    shutil.copy(reference / "autoencoder.json", init / "autoencoder.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--per-task", type=int, default=12)
    parser.add_argument("--work", default="benchmarks/results/tiny_recipe")
    parser.add_argument("--settings", action="append", default=[], help="score only these SETTINGS labels (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(VARIANTS))
        return
    work = Path(args.work)
    for name in args.variant:
        changes, train_overrides = VARIANTS[name]
        cfg = replace(BASE, **changes, train_steps=args.steps, train={**BASE.train, **train_overrides})
        anchor = f"-anchor{cfg.vae_anchor:g}" if cfg.vae_anchor else ""
        key = (f"{cfg.size}px-vae{'x'.join(map(str, cfg.vae_channels))}{anchor}-unet{'x'.join(map(str, cfg.unet_channels))}"
               f"-g{cfg.unet_norm_groups or 32}{'-id' if cfg.identity_init else ''}")
        data = build_data(cfg, work / f"data-{cfg.size}")
        init = work / f"init-{key}"
        reference = work / f"init-{cfg.size}px-vae{'x'.join(map(str, cfg.vae_channels))}{anchor}-unet32x64x64-g32"
        if not init.exists() and (reference / "autoencoder.json").exists():
            reuse_autoencoder(reference, init, cfg)  # same seed, same autoencoder: fit it once
        vae = build_init_model(cfg, data, init)
        tcfg = train_config(cfg, init, data, work / f"run-{name}-{args.steps}", log_every=50)
        final = Path(tcfg.output_dir) / "final"
        tick = time.time()
        if not (final / "model_index.json").exists():  # a finished variant is scored again, not retrained
            train(tcfg, progress=True)
        train_s = time.time() - tick
        pipe = load_pipeline(final, device="cpu")
        rows = load_split(data, "validation", ["input_image", "edited_image", "edit_prompt", "task"])
        for label, settings in SETTINGS.items():
            if args.settings and label not in args.settings:
                continue
            tick = time.time()
            try:
                metrics = score(pipe, rows, settings, per_task=args.per_task)
            except NotImplementedError as err:  # e.g. Euler ancestral has no x0 ("sample") prediction
                print(f"{name:22s} {label:26s} unsupported: {err}", flush=True)
                continue
            record = {"variant": name, "steps": args.steps, "settings": label, "train_s": train_s,
                      "score_s": time.time() - tick,
                      "vae_psnr": vae["psnr"], "threads": torch.get_num_threads(), "metrics": metrics}
            with (Path("benchmarks/results") / "tiny_recipe.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            gains = " ".join(f"{t}:{m['model']['psnr'] - m['identity']['psnr']:+.1f}"
                             f"(h{m['model_held_out']['psnr'] - m['identity']['psnr']:+.1f})" for t, m in metrics.items())
            print(f"{name:22s} {label:26s} {gains}", flush=True)


if __name__ == "__main__":
    main()
