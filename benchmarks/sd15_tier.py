"""The SD-1.5-size tier (`make test-sd15`): the post's presets on random weights of Stable Diffusion
1.5's exact sizes and hub layout, on this machine, outside `make test`.

    python benchmarks/sd15_tier.py [--work runs/sd15-tier] [--size 64]
    python benchmarks/sd15_tier.py --phases-only [--phase-size 128]

What it runs, each stage in its own subprocess (so its peak RSS is its own, and never two at once):
  build   the `timbrooks/instruct-pix2pix` layout at full size (UNet 320-640-1280-1280, CLIP-L text
          encoder, safety checker), random weights
  lora    the `sd15-256-lora` preset: bf16, LoRA rank 16, cached latents, validation on, 2 steps,
          then a 2-step edit with the stock pipeline from final/ and from base + `load_lora_weights`
  full    the `sd15-256` preset: full fine-tuning with EMA, bf16 on the CPU (the post's fp16 needs
          CUDA), a checkpoint at step 2, then a stock-pipeline edit of final/
  phases  one fp32 training step split into its phases (VAE encode, text encode, UNet forward,
          backward, AdamW), timed and FLOP-counted: where a cached step (no encoders) loses to the
          FLOP count

Each stage fails loudly (non-zero exit) if a check fails; the results go to
`benchmarks/results/sd15_tier.json` and a markdown block is printed for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "sd15_tier.json"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


# --- stages (each runs in a fresh process) -----------------------------------------------------


def stage_build(work: Path, size: int) -> dict:
    import numpy as np
    from PIL import Image

    from instructsd.data.build import build_dataset
    from instructsd.models.hub_layout import write_hub_model

    started = time.time()
    model = work / "instruct-pix2pix"
    if not (model / "model_index.json").is_file():
        write_hub_model(model, layout="instruct-pix2pix", size="full", seed=0)
    rng = np.random.default_rng(0)
    photos = [(f"p{i}", Image.fromarray(rng.integers(0, 255, (size + 32, size + 48, 3), dtype=np.uint8))) for i in range(6)]
    if not (work / "data").exists():
        build_dataset(photos, work / "data", tasks=("denoise", "lowlight"), size=size, crops_per_image=1,
                      val_fraction=0.34, progress=False)
    return {"seconds": time.time() - started, "peak_rss_gb": peak_rss_gb()}


def _edit_stock(folder: Path, size: int, lora: Path | None = None, base: Path | None = None):
    """A 2-step edit with stock diffusers only: the folder as saved, or the base + the adapter."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(base or folder)
    if lora is not None:
        pipe.load_lora_weights(lora)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8))
    out = pipe("denoise the image", image=image, num_inference_steps=2, image_guidance_scale=1.5, guidance_scale=7.0,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert out.shape == (size, size, 3) and np.isfinite(out).all(), out.shape
    return out


def stage_train(work: Path, size: int, kind: str) -> dict:
    import numpy as np

    from instructsd.config import load_config
    from instructsd.train.config import TrainConfig
    from instructsd.train.loop import train

    preset = {"lora": "sd15-256-lora", "full": "sd15-256"}[kind]
    overrides = [f"base_model={work / 'instruct-pix2pix'}", f"dataset={work / 'data'}", f"output_dir={work / kind}",
                 f"resolution={size}", "max_train_steps=2", "train_batch_size=1", "gradient_accumulation_steps=1",
                 "checkpoint_every=2", "log_every=1", "report_to=none", "overwrite=true", "resume=",
                 "mixed_precision=bf16"]  # the post's fp16 needs CUDA; bf16 autocast runs on the CPU
    if kind == "lora":
        overrides += ["validation_every=2", "num_validation_images=1", "validation.num_inference_steps=2", f"cache_dir={work / 'cache'}"]
    cfg = load_config(TrainConfig, preset, overrides)
    started = time.time()
    result = train(cfg, progress=True)
    seconds = time.time() - started
    record = {"preset": preset, "overrides": overrides, "steps": len(result.losses), "losses": result.losses,
              "train_seconds": seconds, "seconds_per_step": result.seconds_per_step,
              "peak_rss_gb_after_train": peak_rss_gb()}
    checkpoint = work / kind / "checkpoints" / "step-0000002"
    record["checkpoint_gb"] = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) / 1024 ** 3
    assert all(np.isfinite(loss) for _, loss in result.losses), result.losses
    tick = time.time()
    merged = _edit_stock(result.final_dir, size)
    record["edit_seconds"] = time.time() - tick
    if kind == "lora":
        assert (work / kind / "validation.jsonl").is_file(), "validation did not run"
        adapted = _edit_stock(result.final_dir, size, lora=work / kind / "lora", base=work / "instruct-pix2pix")
        record["lora_vs_final_max_abs_diff"] = float(np.abs(adapted - merged).max())
    record["peak_rss_gb"] = peak_rss_gb()
    return record


def stage_phases(work: Path, size: int) -> dict:
    """One fp32 full fine-tuning step at ``size`` px, batch 1, split into phases."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from instructsd.models.loading import load_components

    parts = load_components(work / "instruct-pix2pix")
    unet, vae, text_encoder, tok = parts.unet.train(), parts.vae.eval(), parts.text_encoder.eval(), parts.tokenizer
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)  # on CPU torch picks the per-tensor (not foreach) loop
    pixels = torch.randn(2, 3, size, size)
    ids = tok(["denoise the image"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    timings: dict[str, list[float]] = {}
    flops: dict[str, int] = {}

    def phase(name, fn, count=False):
        if count:
            with FlopCounterMode(display=False) as counter:
                value = fn()
            flops[name] = counter.get_total_flops()
            return value
        tick = time.perf_counter()
        value = fn()
        timings.setdefault(name, []).append(time.perf_counter() - tick)
        return value

    def step(count: bool):
        with torch.no_grad():
            latents = phase("vae_encode (input + target)", lambda: vae.encode(pixels).latent_dist.mode() * 0.18215, count)
            text = phase("text_encode", lambda: text_encoder(ids)[0], count)
        sample = torch.cat([latents[:1], latents[1:]], dim=1)
        t = torch.tensor([500])
        out = phase("unet_forward", lambda: unet(sample, t, text).sample, count)
        loss = (out.float() - torch.randn_like(out)).pow(2).mean()
        phase("unet_backward", lambda: loss.backward(), count)
        if not count:
            phase("adamw_step", lambda: optimizer.step())

    step(count=True)  # FLOPs (and a warm-up for the kernels)
    optimizer.step()  # allocates AdamW's two moments (6.9 GB at SD-1.5 size) outside the timed steps
    optimizer.zero_grad(set_to_none=True)
    faults = {}
    # set_to_none=True (PyTorch's default) frees the 3.4 GB of gradients each step; glibc hands blocks that large
    # back to the kernel, so the next backward page-faults all of them in again. False keeps the buffers.
    for set_to_none in (True, False):
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(3):
            step(count=False)
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=set_to_none)
            timings.setdefault("zero_grad", []).append(time.perf_counter() - tick)
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults[f"set_to_none={set_to_none}"] = {
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / 3,
            "system_seconds_per_step": (after.ru_stime - before.ru_stime) / 3,
            "seconds_per_step": {k: sorted(v[-3:])[1] for k, v in timings.items()}}
    med = faults["set_to_none=False"]["seconds_per_step"]
    params = sum(p.numel() for p in unet.parameters())
    return {"size": size, "threads": torch.get_num_threads(), "unet_params": params, "seconds": med, "flops": flops,
            "gflops_per_s": {k: flops[k] / med[k] / 1e9 for k in flops if k in med}, "zero_grad": faults,
            "load_average": os.getloadavg(), "peak_rss_gb": peak_rss_gb()}


# --- driver ----------------------------------------------------------------------------------


def run_stage(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(args.work), "--size", str(args.size),
           "--phase-size", str(args.phase_size)] + (["--glibc-defaults"] if args.glibc_defaults else [])
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    tick = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode})")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["stage_wall_seconds"] = time.time() - tick
    print(json.dumps(record, default=float)[:600], flush=True)
    return record


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; date {results['date']}; command `{results['command']}`.", "",
             "| stage | steps | s/step (steady) | train s | peak RSS GB | checkpoint GB | stock edit s |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("lora", "full"):
        r = results.get(kind)
        if r:
            lines.append(f"| {r['preset']} | {r['steps']} | {r['seconds_per_step']:.1f} | {r['train_seconds']:.0f} | "
                         f"{r['peak_rss_gb']:.1f} | {r['checkpoint_gb']:.2f} | {r['edit_seconds']:.1f} |")
    if "lora" in results:
        lines.append(f"\nLoRA: stock `load_lora_weights` on the base vs final/ (merged), max abs diff "
                     f"{results['lora']['lora_vs_final_max_abs_diff']:.4f} on [0, 1].")
    ph = results.get("phases")
    if ph:
        lines += ["", f"One fp32 step at {ph['size']} px, batch 1, {ph['threads']} threads (median of 3):", "",
                  "| phase | seconds | GFLOP | GFLOP/s |", "|---|---|---|---|"]
        for name, sec in ph["seconds"].items():
            if name == "zero_grad":
                continue
            gf = ph["flops"].get(name)
            lines.append(f"| {name} | {sec:.2f} | {gf / 1e9:.1f} | {ph['gflops_per_s'][name]:.0f} |" if gf else
                         f"| {name} | {sec:.2f} | — | — |")
    if ph and "zero_grad" in ph:
        lines += ["", "Gradients freed (`zero_grad(set_to_none=True)`) vs kept between steps:", "",
                  "| zero_grad | minor page faults / step | system s / step | backward s | AdamW s |", "|---|---|---|---|---|"]
        for name, z in ph["zero_grad"].items():
            lines.append(f"| {name} | {z['minor_faults_per_step']:.0f} | {z['system_seconds_per_step']:.1f} | "
                         f"{z['seconds_per_step']['unet_backward']:.1f} | {z['seconds_per_step']['adamw_step']:.1f} |")
        lines.append(f"\nLoad average during the phases: {', '.join(f'{x:.1f}' for x in ph['load_average'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/sd15-tier"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--phase-size", type=int, default=128)
    parser.add_argument("--stage", choices=["build", "lora", "full", "phases"])
    parser.add_argument("--phases-only", action="store_true")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="Leave glibc's malloc as it is (the trainer's keep_freed_memory() is applied otherwise).")
    args = parser.parse_args()
    if args.stage:
        args.work.mkdir(parents=True, exist_ok=True)
        if not args.glibc_defaults:
            from instructsd.train.allocator import keep_freed_memory

            keep_freed_memory()
        record = {"build": lambda: stage_build(args.work, args.size),
                  "lora": lambda: stage_train(args.work, args.size, "lora"),
                  "full": lambda: stage_train(args.work, args.size, "full"),
                  "phases": lambda: stage_phases(args.work, args.phase_size)}[args.stage]()
        print(json.dumps(record, default=float))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
                           f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB, no GPU",
                   date=time.strftime("%Y-%m-%d"), command=" ".join(["python", *sys.argv]))
    stages = ["build", "phases"] if args.phases_only else ["build", "lora", "full", "phases"]
    for name in stages:
        results[name] = run_stage(name, args)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=float))
    print(markdown(results))


if __name__ == "__main__":
    main()
