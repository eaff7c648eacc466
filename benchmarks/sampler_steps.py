"""How many sampler steps does a tiny clean-latent editor want? (benchmarks/RESULTS.md, "Sampler steps")

Edits 8 held-out rows per task of a pre-training dataset with DDIM at several step counts and both
timestep spacings, two noise seeds each, and prints PSNR against the exact targets (mean over seeds).

    python benchmarks/sampler_steps.py MODEL DATA      # DATA: a pretrain-tiny run's OUT/work/data

'trailing' spacing starts at the last training step (t = 999), so one step is the model's own
clean-latent prediction from pure noise; 'leading' (diffusers' old default) starts at t = 951 for
20 steps and at t = 1 for one step (a one-step 'leading' edit is meaningless and is not run).
"""

import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

from instructsd.data.load import load_split

CASES = (("leading", 20, 1.0, 1.0), ("trailing", 1, 1.0, 1.0), ("trailing", 3, 1.0, 1.0), ("trailing", 20, 1.0, 1.0),
         ("leading", 20, 1.5, 3.0))


def tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * np.log10(4 / ((a - b) ** 2).mean().item()))


model, data = sys.argv[1], sys.argv[2]
pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
training = pipe.scheduler.config
columns = load_split(data, "validation", ["input_image", "edited_image", "edit_prompt", "task"])
by_task: dict[str, list[int]] = {}
for i, task in enumerate(columns["task"]):
    by_task.setdefault(task, []).append(i)
means: dict[str, list[float]] = {}
for task, indices in sorted(by_task.items()):
    picked = indices[:: max(1, len(indices) // 8)][:8]
    inputs = [columns["input_image"][i] for i in picked]
    target = tensor([columns["edited_image"][i] for i in picked])
    cells = {"identity": psnr(tensor(inputs), target)}
    for spacing, steps, image_scale, text_scale in CASES:
        pipe.scheduler = DDIMScheduler.from_config(training, timestep_spacing=spacing)
        values = []
        for seed in (0, 1):
            out = pipe([columns["edit_prompt"][i] for i in picked], image=inputs, num_inference_steps=steps,
                       guidance_scale=text_scale, image_guidance_scale=image_scale, output_type="np",
                       generator=torch.Generator().manual_seed(seed)).images
            values.append(psnr(torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1, target))
        key = f"{spacing} {steps} (image {image_scale:g} / text {text_scale:g})"
        cells[key] = float(np.mean(values))
        means.setdefault(key, []).append(cells[key])
    print(task, "  ".join(f"{k}: {v:.2f}" for k, v in cells.items()), flush=True)
print("mean over tasks", "  ".join(f"{k}: {np.mean(v):.2f}" for k, v in means.items()))
