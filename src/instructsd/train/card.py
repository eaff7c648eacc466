"""The model card written beside the final weights: base, data, method, config, validation scores."""

from __future__ import annotations

import json
from pathlib import Path

from instructsd.config import to_dict
from instructsd.models.saving import base_license, card_metadata, license_note
from instructsd.train.config import TrainConfig


def write_model_card(folder: Path, cfg: TrainConfig, expanded: bool, losses: list[tuple[int, float]], seconds: float,
                     validation_log: Path | None = None) -> None:
    """A README.md beside the weights: where they came from, how they were trained, how they scored."""
    tail = [v for _, v in losses[-max(1, len(losses) // 10):]]
    start = "4-channel Stable Diffusion, conv_in expanded to 8 channels (weight and bias kept, new channels zero)" if expanded \
        else "8-channel InstructPix2Pix checkpoint, fine-tuned as is"
    config = "\n".join(f"{k}: {json.dumps(v)}" for k, v in to_dict(cfg).items())
    method = "full fine-tuning"
    if cfg.lora_rank:
        from instructsd.models.lora import trains_conv_in

        conv_in = " + full conv_in" if trains_conv_in(cfg.lora_train_conv_in, expanded) else ""
        method = f"LoRA rank {cfg.lora_rank} on {', '.join(cfg.lora_target_modules)}{conv_in}, merged"
    scores = ""
    if validation_log is not None and validation_log.is_file():
        lines = validation_log.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            scores = "\n## Validation (last)\n" + "\n".join(f"- {k}: {v:.4f}" for k, v in last.items() if k != "step") + \
                f"\n- at step {last['step']}\n"
    license = base_license(cfg.base_model)
    kept = "- safety checker: dropped on request (drop_safety_checker=true); the base's safety checker and feature " \
        "extractor are not in this folder\n" if cfg.drop_safety_checker else ""
    pipeline = json.loads((folder / "model_index.json").read_text())["_class_name"]  # SD or SDXL InstructPix2Pix
    text = card_metadata(cfg.base_model, [cfg.dataset], license, lora=cfg.lora_rank > 0) + f"""# InstructPix2Pix model trained with instructsd

- base model: `{cfg.base_model}` ({start})
- method: {method}
- dataset: `{cfg.dataset}`
- optimizer steps: {len(losses)}, effective batch {cfg.effective_batch_size} per process
- final training loss (mean of the last 10% of steps): {sum(tail) / max(1, len(tail)):.4f}
- wall time: {seconds / 60:.1f} min
- sampler, safety checker and license: the base's, unchanged
{kept}{license_note(license)}{scores}
Edit with `instructsd edit --model {folder} --image in.png --instruction "..." --out out.png`,
or load it in diffusers with `{pipeline}.from_pretrained`.

## Config
```yaml
{config}
```
"""
    (folder / "README.md").write_text(text)
