"""Does a text-to-image share change an edit fine-tune? (issue 18)

Fine-tunes the shipped tiny base (instructsd/tiny-base, 32 px) on sepia pairs from the bundled
photos — as the quickstart does — twice, for the same steps: edit rows only, and the same edit
rows plus a ``t2i`` component (the other bundled photos, captioned "a photo of NAME") making about
a quarter of the samples. Then, for the base and both fine-tunes:

- **edit PSNR** on the held-out sepia pairs (photos the base never saw, the quickstart's
  validation photos), with the quickstart's validation settings (DDIM 20, s_I 1.5, s_T 7);
- **drift from an all-zero image**: each model "edits" a black image with the held-out photos'
  captions and with sepia instructions, same seeds; PSNR of its output against the base's output
  (high = generation from the empty image stayed where the base had it).

    python benchmarks/t2i_mix.py --steps 150            # about 10 CPU minutes on a shared 2-core machine

Writes benchmarks/results/t2i_mix.json and prints a table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instructsd.config import load_config
from instructsd.data.load import load_split
from instructsd.data.mixture import parse_mixture
from instructsd.data.samples import GROUPS, sample_images
from instructsd.data.tasks import get_task
from instructsd.data.write import build_mixture
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.eval.metrics import psnr
from instructsd.models.loading import tiny_base_path
from instructsd.recipes.quickstart import unseen_photos
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

SETTINGS = EditSettings(num_inference_steps=20, image_guidance_scale=1.5, guidance_scale=7.0, scheduler="ddim")


def caption(name: str) -> str:
    return "a photo of " + name.replace("_", " ")


def build(work: Path, held_out: list[str], t2i_count: int, edit_count: int) -> Path:
    """Sepia pairs (held-out photos in validation) and, when ``t2i_count``, captioned training photos."""
    out = work / ("data-t2i" if t2i_count else "data-edit")
    if out.exists():
        return out
    components = [{"task": "sepia", "source": {"samples": True}, "count": edit_count}]
    if t2i_count:
        folder = work / "captioned"
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in sample_images():
            if GROUPS.get(name, name) not in held_out:  # the held-out photos stay unseen in every form
                image.save(folder / f"{name}.png")
                (folder / f"{name}.txt").write_text(caption(name))
        components.append({"t2i": {"folder": str(folder)}, "count": t2i_count})
    mixture = parse_mixture({"seed": 0, "size": 32, "min_size": 32, "instructions": "sampled",
                             "holdout": held_out, "val_fraction": 0.1, "components": components})
    build_mixture(mixture, out, progress=False)
    return out


def fine_tune(work: Path, data: Path, steps: int) -> Path:
    cfg = load_config(TrainConfig, "quickstart", [
        f"dataset={data}", f"output_dir={work / ('train-' + data.name)}", f"max_train_steps={steps}",
        "validation_every=0", "overwrite=true", f"cache_dir={work / ('cache-' + data.name)}"])
    result = train(cfg, progress=False)
    return result.final_dir


def edit_psnr(pipe, rows) -> float:
    outs = edit_images(pipe, list(rows["input_image"]), list(rows["edit_prompt"]), SETTINGS, batch_size=8)
    return float(np.mean([psnr(o, t) for o, t in zip(outs, rows["edited_image"])]))


def from_black(pipe, prompts: list[str]) -> list[Image.Image]:
    black = Image.new("RGB", (32, 32))
    return edit_images(pipe, [black] * len(prompts), prompts, SETTINGS, batch_size=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--edit-count", type=int, default=384)
    parser.add_argument("--t2i-count", type=int, default=128, help="t2i rows beside the edit rows (128/512 = 25%%)")
    parser.add_argument("--work", default="runs/bench-t2i")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    record = json.loads((tiny_base_path() / "pretrain.json").read_text())
    held_out = unseen_photos(record)
    started = time.time()
    models = {"base (not fine-tuned)": tiny_base_path()}
    for label, count in (("edit only", 0), ("edit + t2i", args.t2i_count)):
        models[label] = fine_tune(work, build(work, held_out, count, args.edit_count), args.steps)
    rows = load_split(work / "data-edit", "validation", ["input_image", "edited_image", "edit_prompt"])
    held_names = [n for n, _ in sample_images() if GROUPS.get(n, n) in held_out]
    prompts = {"captions": [caption(n) for n in held_names] * 4, "instructions": list(get_task("sepia").instructions[:8])}
    results, base_black = {}, {}
    for label, path in models.items():
        pipe = load_pipeline(path, device="cpu")
        res = {"edit_psnr": edit_psnr(pipe, rows)}
        for kind, texts in prompts.items():
            outs = from_black(pipe, texts)
            if label.startswith("base"):
                base_black[kind] = outs
            res[f"black_{kind}_psnr_to_base"] = float(np.mean([min(psnr(o, b), 99.0) for o, b in zip(outs, base_black[kind])]))
            res[f"black_{kind}_mean_level"] = float(np.mean([np.asarray(o, np.float32).mean() for o in outs]))
        results[label] = res
        print(label, json.dumps(res), flush=True)
    identity = float(np.mean([psnr(i, t) for i, t in zip(rows["input_image"], rows["edited_image"])]))
    summary = {"steps": args.steps, "edit_rows": args.edit_count, "t2i_rows": args.t2i_count, "held_out": held_out,
               "held_out_pairs": len(rows), "identity_psnr": identity, "models": results,
               "wall_seconds": round(time.time() - started)}
    out = Path(__file__).parent / "results" / "t2i_mix.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| model | edit PSNR (dB) | black+caption: PSNR to base | black+instruction: PSNR to base | "
          "black+caption mean level |\n|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['edit_psnr']:.2f} | {r['black_captions_psnr_to_base']:.2f} | "
              f"{r['black_instructions_psnr_to_base']:.2f} | {r['black_captions_mean_level']:.1f} |")
    print(f"| identity | {identity:.2f} | | | |")


if __name__ == "__main__":
    main()
