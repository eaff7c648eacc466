"""Training throughput: our loop with the latent cache vs. without it vs. the UNet alone.

    python benchmarks/train_throughput.py                 # tiny model on CPU, through instructsd.train.loop.train
    python benchmarks/train_throughput.py --sd15          # SD-1.5-size random weights on CUDA, bf16, 256 px, batch 8

Variants (each in a fresh subprocess, so peak RSS is its own):
  (a) cached    our training loop, VAE latents and text embeddings read from the cache
  (b) uncached  our loop running the VAE and text encoder every step (the reference scripts' cost profile)
  (c) unet      UNet forward + backward + AdamW step alone on random tensors of the same shapes (the floor)

CPU mode times the real ``train()`` (its steady state: setup, cache building, the first step and
saving excluded) on one thread in process CPU time, so samples/s means samples per CPU-second and
neighbours on a shared machine do not distort it. The --sd15 mode times the same objective
(``instruct_pix2pix_loss``) on components of Stable Diffusion 1.5's sizes and reports
model-FLOPs utilization from ``torch.utils.flop_counter`` against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPEC_KW = dict(unet_channels=(16, 32), text_dim=32, vae_channels=(16, 32), vocab_size=700, sample_size=32)  # the tests' model
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- CPU: the real loop on a tiny model --------------------------------------------------------


def prepare_cpu(work: Path, size: int) -> None:
    from instructsd.data.build import build_dataset
    from instructsd.models.tiny import TinySpec, init_tiny
    import numpy as np
    from PIL import Image

    SPEC = TinySpec(**SPEC_KW) if os.environ.get("BENCH_SPEC", "test") == "test" else TinySpec()
    rng = np.random.default_rng(0)
    photos = [(f"p{i}", Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))) for i in range(8)]
    build_dataset(photos, work / "data", size=size, crops_per_image=2, val_fraction=0.25, progress=False, overwrite=True)
    init_tiny(work / "model", in_channels=8, overwrite=True, spec=SPEC)


def run_cpu_variant(variant: str, work: Path, steps: int, batch: int, size: int) -> dict:
    import torch
    from instructsd.config import load_config
    from instructsd.train.config import TrainConfig

    # One thread, timed in process CPU time: on a shared machine wall time measures the neighbours.
    torch.set_num_threads(1)
    if variant == "unet":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(work / "model", subfolder="unet").train()
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        latent = size // 2  # the tiny autoencoder downsamples by 2
        x = torch.randn(batch, 8, latent, latent)
        text = torch.randn(batch, 77, unet.config.cross_attention_dim)
        t = torch.randint(0, 1000, (batch,))
        target = torch.randn(batch, 4, latent, latent)

        def step():
            loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=text).sample, target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        tick, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall, per_step = (time.perf_counter() - tick) / steps, (time.process_time() - cpu) / steps
    else:
        from instructsd.train.loop import train

        def timed(n: int, tag: str) -> float:
            """Steady-state seconds per step of a real run (its first step, setup and saving excluded)."""
            cfg = load_config(TrainConfig, "tiny-cpu", [
                f"base_model={work / 'model'}", f"dataset={work / 'data'}", f"output_dir={work / ('run-' + variant + tag)}",
                f"resolution={size}", f"train_batch_size={batch}", "gradient_accumulation_steps=1", f"max_train_steps={n}",
                f"cache_latents={'true' if variant == 'cached' else 'false'}", f"cache_dir={work / 'cache'}",
                "center_crop=true"])
            result = train(cfg, progress=False)
            return result.seconds_per_step, result.cpu_seconds_per_step

        wall, per_step = timed(steps + 1, "")
    return {"variant": variant, "samples_per_s": batch / per_step, "cpu_s_per_step": per_step, "wall_s_per_step": wall,
            "peak_rss_mb": peak_rss_mb()}


# --- CUDA: SD-1.5 sizes, random weights ----------------------------------------------------------


def run_sd15_variant(variant: str, steps: int, batch: int, size: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from torch.utils.flop_counter import FlopCounterMode

    from instructsd.train.cache import sample_latents
    from instructsd.train.objective import DropoutProbs, instruct_pix2pix_loss

    assert torch.cuda.is_available(), "--sd15 needs a CUDA GPU"
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    unet = UNet2DConditionModel(sample_size=size // 8, in_channels=8, out_channels=4, cross_attention_dim=768,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8).to(dev).train()
    unet.enable_gradient_checkpointing() if os.environ.get("GC") else None
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2).to(dev, torch.bfloat16).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, max_position_embeddings=77)).to(dev, torch.bfloat16).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    gen = torch.Generator(dev).manual_seed(0)
    probs = DropoutProbs()
    pixels = torch.randn(batch, 3, size, size, device=dev, dtype=torch.bfloat16)
    ids = torch.randint(0, 49408, (batch, 77), device=dev)
    latent = size // 8
    moments = torch.randn(batch, 8, latent, latent, device=dev)
    cached_text = torch.randn(batch, 77, 768, device=dev)
    null_text = torch.zeros(1, 77, 768, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if variant == "uncached":
                with torch.no_grad():
                    image_latents = vae.encode(pixels).latent_dist.mode()
                    latents = vae.encode(pixels).latent_dist.sample(generator=gen) * 0.18215
                    text = text_encoder(ids)[0]
            elif variant == "cached":
                image_latents, latents, text = moments[:, :4], sample_latents(moments, gen) * 0.18215, cached_text
            else:
                image_latents, latents, text = moments[:, :4], moments[:, 4:], cached_text
            loss = instruct_pix2pix_loss(unet, scheduler, latents, image_latents, text, null_text, probs, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - tick) / steps
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = flops / per_step / 1e12
    return {"variant": variant, "device": name, "samples_per_s": batch / per_step, "s_per_step": per_step,
            "tflops_per_step": flops / 1e12, "achieved_tflops": achieved, "mfu": achieved / peak if peak else None,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="SD-1.5-size random weights on CUDA (bf16)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--spec", choices=["test", "quickstart"], default="test",
                    help="CPU model: the tests' tiny model or the quickstart's (4x wider autoencoder and UNet)")
    ap.add_argument("--repeats", type=int, default=1, help="run the variants round-robin this many times; keep each one's best")
    ap.add_argument("--variant", choices=["cached", "uncached", "unet"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = args.steps or (20 if args.sd15 else 6)
    batch = args.batch or 8
    size = args.size or (256 if args.sd15 else 32)

    if args.variant:  # a child: one variant, one JSON line
        result = run_sd15_variant(args.variant, steps, batch, size) if args.sd15 else \
            run_cpu_variant(args.variant, Path(args.work), steps, batch, size)
        print("RESULT " + json.dumps(result))
        return

    os.environ["BENCH_SPEC"] = args.spec
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.sd15:
            prepare_cpu(work, size)
        results: dict[str, dict] = {}
        for variant in ("cached", "uncached", "unet") * args.repeats:
            cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work), "--steps", str(steps),
                   "--batch", str(batch), "--size", str(size)] + (["--sd15"] if args.sd15 else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            result = json.loads(line[7:])
            print(json.dumps(result))
            if variant not in results or result["samples_per_s"] > results[variant]["samples_per_s"]:
                results[variant] = result
    a, b, c = (results[k]["samples_per_s"] for k in ("cached", "uncached", "unet"))
    print(f"\n(a) cached {a:.2f} samples/s, (b) uncached {b:.2f}, (c) UNet alone {c:.2f}")
    print(f"(a)/(b) = {a / b:.2f}x  (target >= 2)   (a)/(c) = {a / c:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
