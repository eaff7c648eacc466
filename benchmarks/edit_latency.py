"""Edit latency: our edit_images vs calling StableDiffusionInstructPix2PixPipeline directly.

Same tiny model, same 64 px image, 20 steps, image guidance 1.5, text guidance 7.0, seed 0.
Runs are interleaved (ours, direct, ..., then the reverse order) after a warm-up and the
medians compared, so load from other processes on the machine hits both alike. Also times the high-resolution
mode on a 1024 px input against resize → edit → upscale of the same input.

Run:  .venv/bin/python benchmarks/edit_latency.py [--repeats 6] [--threads 1] [--model runs/quickstart/train/final]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from instructsd.data.samples import sample_images
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline, native_side


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--model", default="runs/quickstart/train/final")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 keeps timings stable on a shared 2-core machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model
    if not Path(model, "model_index.json").is_file():
        from instructsd.models.tiny import init_tiny

        model = str(init_tiny(Path(tempfile.mkdtemp()) / "tiny"))
    pipe = load_pipeline(model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    side = native_side(pipe)
    photo = dict(sample_images())["astronaut"]
    small = photo.resize((side, side), Image.LANCZOS)
    big = photo.resize((1024, 1024), Image.LANCZOS)
    settings = EditSettings()  # 20 steps, 1.5 / 7.0, euler_ancestral
    text = "Enhance the low-light image."

    def ours():
        edit_images(pipe, [small], [text], settings, seeds=[0])

    def direct():
        pipe(prompt=[text], image=[small], num_inference_steps=20, image_guidance_scale=1.5, guidance_scale=7.0,
             generator=[torch.Generator("cpu").manual_seed(0)])

    def plain_big():  # resize → edit at native size → upscale
        (out,) = edit_images(pipe, [big.resize((side, side), Image.LANCZOS)], [text], settings, seeds=[0])
        out.resize(big.size, Image.BICUBIC)

    def highres(mode):
        return lambda: edit_images(pipe, [big], [text], EditSettings(highres=mode), seeds=[0])

    cases = {"ours": ours, "direct": direct, "resize-edit-upscale 1024": plain_big,
             "highres residual 1024": highres("residual"), "highres guided 1024": highres("guided")}
    for fn in cases.values():
        fn()  # warm-up: scheduler swap, allocator, first-call overheads
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.repeats):
        order = list(cases.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate order: no position bias
            times[name].append(timed(fn))
    # Best-of-N is the estimator least disturbed by other processes (as timeit does); medians shown too.
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    print(f"model {model}, native {side} px, {args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}")
    print("| case | best s | median s |\n|---|---|---|")
    for name in cases:
        print(f"| {name} | {best[name]:.3f} | {med[name]:.3f} |")
    print(f"\nours / direct = {best['ours'] / best['direct']:.3f} (best), {med['ours'] / med['direct']:.3f} (median)")
    base = best["resize-edit-upscale 1024"]
    print(f"highres residual / resize-edit-upscale = {best['highres residual 1024'] / base:.3f} (best)")
    print(f"highres guided / resize-edit-upscale = {best['highres guided 1024'] / base:.3f} (best)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
