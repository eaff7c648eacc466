"""The InstructPix2Pix fine-tuning recipe: setup → train → save, readable top to bottom.

Runs on one CPU, one GPU or many through ``accelerate launch``. Weights are loaded from the
same checkpoint on every process and conv_in surgery is decided from the checkpoint, so all
ranks start identical; only data order, noise and dropout are offset by rank.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from instructsd.config import save_config, to_dict
from instructsd.errors import InstructSDError
from instructsd.models.loading import load_components
from instructsd.models.surgery import ensure_instruct_unet
from instructsd.models.tiny import save_pipeline
from instructsd.train.config import TrainConfig
from instructsd.train.data import PairDataset, collate, load_split
from instructsd.train.objective import DropoutProbs, encode_pair, instruct_pix2pix_loss


@dataclass
class TrainResult:
    """Where the run wrote its model and what the loss did."""

    final_dir: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    expanded_conv_in: bool = False
    wall_seconds: float = 0.0


class TextEmbeddings:
    """Frozen text-encoder outputs, computed once per distinct prompt and kept in memory.

    The reference script re-encodes every prompt (and the empty prompt) at every step
    although the encoder never changes; instruction datasets repeat a few prompts endlessly.
    """

    def __init__(self, tokenizer, text_encoder, device):
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            for prompt, emb in zip(missing, self.text_encoder(ids)[0]):
                self.cache[prompt] = emb
        return torch.stack([self.cache[p] for p in prompts])


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``cfg.dataset``; returns where the pipeline was saved."""
    if not cfg.base_model:
        raise InstructSDError("config key 'base_model' is empty; set base_model=<hub id or folder>")
    if not cfg.dataset:
        raise InstructSDError("config key 'dataset' is empty; set dataset=<folder from `instructsd data build`>")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InstructSDError("mixed_precision=fp16 needs a CUDA GPU; on this machine use mixed_precision=no (or bf16)")
    started = time.time()
    out = Path(cfg.output_dir)

    # --- setup ------------------------------------------------------------------------------
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision)
    rank = accelerator.process_index
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)

    rows = load_split(cfg.dataset, "train", [cfg.input_column, cfg.edited_column, cfg.prompt_column])
    if cfg.max_train_samples:
        rows = rows.select(range(min(cfg.max_train_samples, len(rows))))
    if len(rows) == 0:
        raise InstructSDError(f"dataset '{cfg.dataset}' has an empty train split")

    parts = load_components(cfg.base_model)
    unet, expanded = ensure_instruct_unet(parts.unet)
    scheduler = parts.scheduler
    if cfg.prediction_type:
        scheduler.register_to_config(prediction_type=cfg.prediction_type)
    prediction_type = scheduler.config.prediction_type

    # Frozen parts run in the autocast dtype; the trained UNet keeps fp32 master weights.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    vae, text_encoder = parts.vae.requires_grad_(False), parts.text_encoder.requires_grad_(False)
    vae.to(accelerator.device, dtype=weight_dtype).eval()
    text_encoder.to(accelerator.device, dtype=weight_dtype).eval()
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=type(unet), model_config=unet.config) if cfg.use_ema else None

    dataset = PairDataset(rows, size=cfg.resolution, flip=cfg.random_flip, seed=cfg.seed, input_column=cfg.input_column,
                          edited_column=cfg.edited_column, prompt_column=cfg.prompt_column)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train_batch_size, shuffle=True, collate_fn=collate, drop_last=len(dataset) >= cfg.train_batch_size,
        num_workers=cfg.dataloader_num_workers, generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    # accelerate steps the scheduler once per process per optimizer step, hence the factor.
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.max_train_steps * accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)

    text = TextEmbeddings(parts.tokenizer, text_encoder, accelerator.device)
    null_text = text([""])  # the empty prompt, encoded once (the reference re-encodes it every step)
    noise_gen = torch.Generator(accelerator.device).manual_seed(cfg.seed + 1_000_003 * rank)
    probs = DropoutProbs(cfg.drop_text_prob, cfg.drop_image_prob, cfg.drop_both_prob)

    # --- train ------------------------------------------------------------------------------
    losses: list[tuple[int, float]] = []
    step, epoch, running, micro = 0, 0, 0.0, 0
    bar = tqdm(total=cfg.max_train_steps, desc="train", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    log_file = (out / "losses.jsonl").open("w") if accelerator.is_main_process else None
    while step < cfg.max_train_steps:
        dataset.set_epoch(epoch)
        for batch in loader:
            with accelerator.accumulate(unet):
                image_latents, latents = encode_pair(vae, batch["input_pixels"], batch["edited_pixels"], noise_gen)
                embeddings = text(batch["prompts"]).to(weight_dtype)
                loss = instruct_pix2pix_loss(unet, scheduler, latents, image_latents, embeddings, null_text, probs, noise_gen, prediction_type)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += accelerator.gather(loss.detach()[None]).mean().item()
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.step(unet.parameters())
            mean_loss, running, micro = running / micro, 0.0, 0
            losses.append((step, mean_loss))
            if log_file:
                log_file.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}) + "\n")
            if step % cfg.log_every == 0 or step == cfg.max_train_steps:
                window = [v for _, v in losses[-cfg.log_every:]]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
                if log_file:
                    log_file.flush()
            bar.update(1)
            if step >= cfg.max_train_steps:
                break
        epoch += 1
    bar.close()
    if log_file:
        log_file.close()

    # --- save -------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    final_dir = out / "final"
    if accelerator.is_main_process:
        trained = _cpu_fp32(copy.deepcopy(accelerator.unwrap_model(unet)))
        if ema is not None:
            ema.copy_to(trained.parameters())
        save_pipeline(final_dir, trained, _cpu_fp32(parts.vae), _cpu_fp32(parts.text_encoder), parts.tokenizer, scheduler,
                      overwrite=True)
        write_model_card(final_dir, cfg, expanded, losses, time.time() - started)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(final_dir=final_dir, losses=losses, expanded_conv_in=expanded, wall_seconds=time.time() - started)


def _cpu_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """Saved weights are fp32 on CPU whatever precision trained them."""
    module = module.to("cpu")
    return module if next(module.parameters()).dtype == torch.float32 else module.to(torch.float32)


def write_model_card(folder: Path, cfg: TrainConfig, expanded: bool, losses: list[tuple[int, float]], seconds: float) -> None:
    """A README.md beside the weights: where they came from and how they were trained."""
    tail = [v for _, v in losses[-max(1, len(losses) // 10):]]
    start = "4-channel Stable Diffusion, conv_in expanded to 8 channels (weight and bias kept, new channels zero)" if expanded \
        else "8-channel InstructPix2Pix checkpoint, fine-tuned as is"
    config = "\n".join(f"{k}: {json.dumps(v)}" for k, v in to_dict(cfg).items())
    text = f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [instructsd, instruct-pix2pix]
---
# InstructPix2Pix model trained with instructsd

- base model: `{cfg.base_model}` ({start})
- dataset: `{cfg.dataset}`
- optimizer steps: {len(losses)}, effective batch {cfg.effective_batch_size} per process
- final training loss (mean of the last 10% of steps): {sum(tail) / max(1, len(tail)):.4f}
- wall time: {seconds / 60:.1f} min

Edit with `instructsd edit --model {folder} --image in.png --instruction "..." --out out.png`,
or load it in diffusers with `StableDiffusionInstructPix2PixPipeline.from_pretrained`.

## Config
```yaml
{config}
```
"""
    (folder / "README.md").write_text(text)
