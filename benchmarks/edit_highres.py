"""High-resolution editing at 2048 px: guided upsampling vs resize → edit → upscale.

Ground truth: a 2048 × 2048 mosaic of four photos bundled with scikit-image (each tile
1024 px; sources smaller than that are upscaled with Lanczos, noted below). The input is the
ground truth passed through one of our own degradations (instructsd.data.tasks) at full size.

A tiny model trained for minutes edits poorly, so judging the high-res step by its output
would measure the model, not the method. We therefore score the detail-restoration step with
a *known* low-resolution edit — the ground truth itself, downscaled to the editing size (an
oracle editor) — and compare, from the same low-resolution edit:

  upscale   : bicubic upscale of the low-res edit (what resize → edit → upscale gives)
  residual  : input + upscaled (edit − input)          (`--highres residual`)
  guided    : fast guided filter on the change          (`--highres guided`)
  identity  : the degraded input as is (doing nothing)

If the quickstart model exists (runs/quickstart/train/final), the same comparison is also run
with that model's real low-res edit at its native size (20 steps).

Run:  .venv/bin/python benchmarks/edit_highres.py [--size 2048] [--low 256]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from instructsd.data.samples import skimage_data_dir
from instructsd.data.tasks import get_task
from instructsd.edit.highres import guided_upsample, residual_upsample
from instructsd.eval.metrics import psnr, ssim

TILES = ["retina.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "coffee.png"]


def mosaic(size: int) -> Image.Image:
    half = size // 2
    canvas = Image.new("RGB", (size, size))
    folder = skimage_data_dir()
    for k, name in enumerate(TILES):
        im = Image.open(folder / name).convert("RGB")
        scale = max(half / im.width, half / im.height)
        if scale > 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        left, top = (im.width - half) // 2, (im.height - half) // 2
        canvas.paste(im.crop((left, top, left + half, top + half)), ((k % 2) * half, (k // 2) * half))
    return canvas


def score(name: str, pred: Image.Image, truth: Image.Image) -> dict:
    return {"method": name, "psnr": psnr(pred, truth), "ssim": ssim(pred, truth)}


def compare(full_in: Image.Image, truth: Image.Image, low_in: Image.Image, low_edit: Image.Image) -> list[dict]:
    t0 = time.perf_counter()
    residual = residual_upsample(full_in, low_in, low_edit)
    t1 = time.perf_counter()
    guided = guided_upsample(full_in, low_in, low_edit)
    t2 = time.perf_counter()
    rows = [
        score("upscale (resize→edit→upscale)", low_edit.resize(full_in.size, Image.BICUBIC), truth),
        score("residual (--highres residual)", residual, truth),
        score("guided (--highres guided)", guided, truth),
        score("identity (input as is)", full_in, truth),
    ]
    rows[1]["seconds"], rows[2]["seconds"] = t1 - t0, t2 - t1
    return rows


def table(title: str, rows: list[dict]) -> str:
    lines = [f"\n{title}\n", "| method | PSNR dB | SSIM |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--low", type=int, default=256, help="side the oracle edit is made at")
    parser.add_argument("--model", default="runs/quickstart/train/final")
    args = parser.parse_args()

    truth = mosaic(args.size)
    out = []
    for task in ("lowlight", "cartoonize", "denoise"):
        rng = np.random.default_rng(0)
        degraded, clean = get_task(task).apply(np.asarray(truth), rng)
        full_in, gt = Image.fromarray(degraded), Image.fromarray(clean)
        low_in = full_in.resize((args.low, args.low), Image.LANCZOS)
        low_edit = gt.resize((args.low, args.low), Image.LANCZOS)  # the oracle low-res edit
        rows = compare(full_in, gt, low_in, low_edit)
        out.append(table(f"{task}, {args.size} px, oracle edit at {args.low} px (transfer step: residual "
                         f"{rows[1]['seconds']:.2f} s, guided {rows[2]['seconds']:.2f} s)", rows))
        print(out[-1], flush=True)

    if Path(args.model, "model_index.json").is_file():
        from instructsd.edit.editor import EditSettings, edit_images, load_pipeline, native_side

        import torch

        torch.set_num_threads(1)  # stable on a shared 2-core machine
        pipe = load_pipeline(args.model, device="cpu")
        side = native_side(pipe)
        rng = np.random.default_rng(0)
        task = get_task("lowlight")
        degraded, clean = task.apply(np.asarray(truth), rng)
        full_in, gt = Image.fromarray(degraded), Image.fromarray(clean)
        low_in = full_in.resize((side, side), Image.LANCZOS)
        (low_edit,) = edit_images(pipe, [low_in], [task.canonical], EditSettings(), seeds=[0])
        rows = compare(full_in, gt, low_in, low_edit)
        out.append(table(f"lowlight, {args.size} px, quickstart model's own edit at {side} px", rows))
        print(out[-1], flush=True)
    else:
        print(f"\n(no model at {args.model}; run `make quickstart` for the real-model row)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
