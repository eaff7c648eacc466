"""The training recipe's config: every key the trainer reads, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from instructsd.config import opt
from instructsd.errors import InstructSDError


@dataclass
class TrainConfig:
    # --- what to train, on what, where to write -------------------------------------------
    base_model: str = opt("", "Hub id or local diffusers folder to start from: 8-channel InstructPix2Pix (fine-tuned as is) or 4-channel Stable Diffusion (conv_in expanded).")
    dataset: str = opt("", "Dataset folder written by `instructsd data build` (train/validation splits).")
    output_dir: str = opt("runs/train", "Run folder: resolved config, logs, checkpoints and the final pipeline under final/.")
    input_column: str = opt("input_image", "Dataset column holding the image to edit.")
    edited_column: str = opt("edited_image", "Dataset column holding the edited (target) image.")
    prompt_column: str = opt("edit_prompt", "Dataset column holding the instruction.")
    # --- data ------------------------------------------------------------------------------
    resolution: int = opt(256, "Training size in pixels: shorter side resized to this, then cropped square (aspect kept, never squashed).")
    random_flip: bool = opt(True, "Flip input and target together, independently for each sample.")
    max_train_samples: Optional[int] = opt(None, "Use only the first N training rows (for quick experiments).")
    dataloader_num_workers: int = opt(0, "DataLoader worker processes (0 = load in the training process).")
    # --- optimisation ------------------------------------------------------------------------
    train_batch_size: int = opt(2, "Samples per device per forward pass.")
    gradient_accumulation_steps: int = opt(4, "Forward passes accumulated per optimizer step (effective batch = batch × accumulation × processes).")
    max_train_steps: int = opt(15000, "Optimizer steps to run.")
    learning_rate: float = opt(5e-5, "Peak AdamW learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = opt("constant", "Learning-rate schedule after warm-up.")
    lr_warmup_steps: int = opt(0, "Optimizer steps of linear warm-up.")
    adam_beta1: float = opt(0.9, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    adam_weight_decay: float = opt(1e-2, "AdamW decoupled weight decay.")
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this (0 disables).")
    mixed_precision: Literal["no", "fp16", "bf16"] = opt("no", "Autocast precision; fp16 needs a CUDA GPU.")
    gradient_checkpointing: bool = opt(False, "Recompute UNet activations in the backward pass to save memory.")
    use_ema: bool = opt(False, "Keep an exponential moving average of the UNet weights and save it as the final model.")
    ema_decay: float = opt(0.9999, "EMA decay (warmed up as min(decay, (1 + step) / (10 + step))).")
    # --- objective (InstructPix2Pix, Brooks et al. 2023, sec. 3.2.1) --------------------------
    drop_text_prob: float = opt(0.05, "Probability of replacing only the instruction with the empty prompt (enables text CFG).")
    drop_image_prob: float = opt(0.05, "Probability of zeroing only the input-image latents (enables image CFG).")
    drop_both_prob: float = opt(0.05, "Probability of dropping instruction and image together.")
    prediction_type: Optional[Literal["epsilon", "v_prediction", "sample"]] = opt(None, "Training target; null uses the base model's scheduler setting.")
    # --- bookkeeping -------------------------------------------------------------------------
    seed: int = opt(42, "Seed for weights init order, data order, noise and dropout (rank-offset per process).")
    log_every: int = opt(10, "Log the loss every N optimizer steps.")
    num_validation_images: int = opt(4, "Validation images per task edited for the report after training.")

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InstructSDError(f"invalid config: {msg}")

        need(self.resolution >= 8 and self.resolution % 8 == 0, f"resolution must be a positive multiple of 8, got {self.resolution}")
        need(self.train_batch_size >= 1, "train_batch_size must be >= 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
        need(self.max_train_steps >= 1, "max_train_steps must be >= 1")
        need(self.learning_rate > 0, "learning_rate must be > 0")
        need(self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0")
        need(0 < self.ema_decay < 1, "ema_decay must be in (0, 1)")
        need(self.max_grad_norm >= 0, "max_grad_norm must be >= 0")
        need(self.log_every >= 1, "log_every must be >= 1")
        for key in ("drop_text_prob", "drop_image_prob", "drop_both_prob"):
            need(0 <= getattr(self, key) <= 1, f"{key} must be in [0, 1]")
        total = self.drop_text_prob + self.drop_image_prob + self.drop_both_prob
        need(total <= 1, f"drop_text_prob + drop_image_prob + drop_both_prob must be <= 1, got {total:g}")

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step on one process."""
        return self.train_batch_size * self.gradient_accumulation_steps
