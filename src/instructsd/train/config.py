"""The training recipe's config: every key the trainer reads, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from instructsd.config import opt, to_dict
from instructsd.edit.guidance import (
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULER_NAMES,
    SchedulerChoice,
    guidance_problem,
)
from instructsd.errors import InstructSDError


@dataclass
class ValidationSettings:
    """How in-training validation edits: the edit function's settings (``EditSettings``) that apply
    to it, under the same names and with the same defaults, so validation edits as ``instructsd edit`` does;
    then what it measures beyond PSNR/SSIM and the edit-aware metrics (issue 16): the dual-guidance sweep,
    the best pick, and CLIP / LPIPS models."""

    num_inference_steps: int = opt(DEFAULT_STEPS, "Sampling steps of each validation edit.")
    image_guidance_scale: float = opt(DEFAULT_IMAGE_GUIDANCE, "Image guidance scale s_I (eq. 3; any finite value >= 0).")
    guidance_scale: float = opt(DEFAULT_GUIDANCE, "Text guidance scale s_T (eq. 3; any finite value >= 0).")
    scheduler: SchedulerChoice = opt("auto", "Sampler: auto (Euler ancestral, or Euler for prediction_type sample) or one "
                                             f"of {', '.join(SCHEDULER_NAMES)}.")
    # --- edit-aware validation (issue 16; train/validation.py) ---
    sweep: bool = opt(False, "At each validation also edit the rows at every (text, image) guidance pair of sweep_text × sweep_image: validation/sweep-step-N.json and .png.")
    sweep_text: list = opt([3.0, 7.5], "Text guidance scales s_T of the sweep grid.")
    sweep_image: list = opt([1.0, 1.5, 2.0], "Image guidance scales s_I of the sweep grid.")
    best_metric: str = opt("", "Pick the best validation by this metric over all rows (psnr, ssim, preservation, edit_strength, identity_rate, clip_*), never one flagged as collapsed: best.json and best/; empty = no pick.")
    final_is_best: bool = opt(False, "Save the best validation's weights (best_metric) as final/ instead of the last step's.")
    clip: str = opt("none", "CLIP model (local folder or hub id) for clip_dir / clip_image etc. of each validation; none = skip.")
    lpips: str = opt("none", "LPIPS backbone (alex or vgg; the lpips package) for lpips and the masked LPIPS metrics; none = skip.")

    EDIT_KEYS: ClassVar[tuple[str, ...]] = ("num_inference_steps", "image_guidance_scale", "guidance_scale", "scheduler")

    def __post_init__(self) -> None:
        # Checked here, not at the first validation edit thousands of steps in (issue 11, item 7).
        if self.num_inference_steps < 1:
            raise InstructSDError("invalid config: validation.num_inference_steps must be >= 1")
        problem = guidance_problem(self.image_guidance_scale, self.guidance_scale,
                                   ("validation.image_guidance_scale", "validation.guidance_scale"))
        if problem is not None:
            raise InstructSDError(f"invalid config: {problem}")
        for key in ("sweep_text", "sweep_image"):
            scales = getattr(self, key)
            if not scales or any(guidance_problem(v, 1.0) for v in scales):
                raise InstructSDError(f"invalid config: validation.{key} must be a non-empty list of finite numbers >= 0, "
                                      f"e.g. [1.0, 1.5, 2.0]; got {scales!r}")
        if self.final_is_best and not self.best_metric:
            raise InstructSDError("invalid config: validation.final_is_best=true needs validation.best_metric (e.g. psnr)")

    def edit_settings(self):
        """These settings as the edit function takes them (an ``instructsd.edit.editor.EditSettings``)."""
        from instructsd.edit.editor import EditSettings

        return EditSettings(**{k: v for k, v in to_dict(self).items() if k in self.EDIT_KEYS})


@dataclass
class TrainConfig:
    # --- what to train, on what, where to write -------------------------------------------
    base_model: str = opt("", "Hub id or local diffusers folder to start from: 8-channel InstructPix2Pix (fine-tuned as is) or 4-channel Stable Diffusion (conv_in expanded).")
    dataset: str = opt("", "Dataset: a saved folder (`instructsd data build`; train/validation splits), parquet shards (a folder or glob) or a hub id, read by instructsd.data.load; with streaming, shards read row by row.")
    output_dir: str = opt("runs/train", "Run folder: resolved config, logs, checkpoints and the final pipeline under final/.")
    input_column: str = opt("input_image", "Dataset column holding the image to edit.")
    edited_column: str = opt("edited_image", "Dataset column holding the edited (target) image.")
    prompt_column: str = opt("edit_prompt", "Dataset column holding the instruction.")
    drop_safety_checker: bool = opt(False, "Save final/ without the base's safety checker and feature extractor (kept by default; the model card says when dropped).")
    # --- data ------------------------------------------------------------------------------
    resolution: int = opt(256, "Training size in pixels: shorter side resized to this, then cropped square (aspect kept, never squashed); with aspect_buckets, resolution² is the default bucket area.")
    random_flip: bool = opt(True, "Flip input and target together, independently for each sample.")
    max_train_samples: Optional[int] = opt(None, "Use only the first N training rows (for quick experiments).")
    dataloader_num_workers: int = opt(0, "DataLoader worker processes (0 = load in the training process).")
    center_crop: bool = opt(False, "Crop the centre instead of a random window (forced on with cache_latents, which caches one crop).")
    task_column: str = opt("task", "Dataset column naming each row's task (for deferred instructions and task_weights).")
    task_weights: Optional[dict] = opt(None, "Task mixture {task: weight}: rows drawn with replacement so each task gets that share (null = every row once per epoch).")
    streaming: bool = opt(False, "Stream `dataset` as parquet shards (a folder, a glob or a hub id) row by row: for data larger than memory or disk.")
    shuffle_buffer: int = opt(1000, "With streaming: rows in the seeded shuffle buffer, reseeded each epoch (0 = file order).")
    aspect_buckets: bool = opt(False, "Train each pair at its own aspect ratio: resized and cropped to the nearest of a set of buckets (1:2 … 2:1, about bucket_area pixels); each batch holds one bucket.")
    bucket_area: Optional[int] = opt(None, "With aspect_buckets: pixels per bucket; null = resolution².")
    bucket_step: int = opt(64, "With aspect_buckets: bucket sides are multiples of this (64 for Stable Diffusion: VAE factor 8 × UNet downsampling 8; smaller only for tiny models).")
    max_bad_fraction: float = opt(0.01, "Images failing to decode are skipped and counted; abort once more than this fraction of the training rows failed.")
    # --- caching -------------------------------------------------------------------------------
    cache_latents: bool = opt(False, "Encode VAE latents (both flips) and text embeddings once into a dataset on disk; no encoder runs during training.")
    cache_dir: str = opt("", "Where the cache lives (empty = output_dir/cache); reused across runs when its fingerprint matches.")
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
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = opt(None, "Autocast precision (fp16 needs a CUDA GPU); null = what `accelerate launch --mixed_precision` or `accelerate config` says, else no.")
    gradient_checkpointing: bool = opt(False, "Recompute UNet activations in the backward pass to save memory.")
    use_8bit_adam: bool = opt(False, "bitsandbytes 8-bit AdamW (optional extra `bnb`, CUDA) to cut optimizer memory by ~75%.")
    allow_tf32: bool = opt(False, "Allow TF32 matmuls on Ampere+ GPUs (faster, slightly less precise).")
    compile: bool = opt(False, "torch.compile the UNet (attention is diffusers' default SDPA either way).")
    use_ema: bool = opt(False, "Keep an exponential moving average of the UNet weights and save it as the final model.")
    ema_decay: float = opt(0.9999, "EMA decay (warmed up as min(decay, (1 + step) / (10 + step))).")
    ema_on_cpu: bool = opt(False, "Keep the EMA weights in CPU memory (saves one UNet of GPU memory, costs a transfer per step).")
    # --- LoRA (Hu et al. 2021) via peft ------------------------------------------------------
    lora_rank: int = opt(0, "LoRA rank on the UNet attention projections (0 = full fine-tuning).")
    lora_alpha: Optional[float] = opt(None, "LoRA alpha (scale = alpha / rank); null = rank.")
    lora_target_modules: list = opt(["to_q", "to_k", "to_v", "to_out.0"], "UNet module names that get LoRA adapters.")
    lora_train_conv_in: Optional[bool] = opt(None, "Also train conv_in fully beside the adapters; null = only when conv_in was expanded from a 4-channel start.")
    # --- objective (InstructPix2Pix, Brooks et al. 2023, sec. 3.2.1) --------------------------
    drop_text_prob: float = opt(0.05, "Probability of replacing only the instruction with the empty prompt (enables text CFG).")
    drop_image_prob: float = opt(0.05, "Probability of zeroing only the input-image latents (enables image CFG).")
    drop_both_prob: float = opt(0.05, "Probability of dropping instruction and image together.")
    prediction_type: Optional[Literal["epsilon", "v_prediction", "sample"]] = opt(None, "Training target; null uses the base model's scheduler setting.")
    snr_gamma: Optional[float] = opt(None, "Min-SNR-γ loss weighting (Hang et al. 2023; 5.0 is their choice); null = plain MSE.")
    noise_offset: float = opt(0.0, "Add this times per-channel N(0,1) to the noise (Guttenberg 2023) so the model learns very dark/bright images; 0 = off.")
    edit_region_weight: float = opt(1.0, "Loss weight inside each pair's automatic edit mask (eval/edit_metrics.py), downsampled to the latents; 1 with keep_region_weight 1 = plain loss.")
    keep_region_weight: float = opt(1.0, "Loss weight outside the edit mask (what the edit should keep).")
    # --- bookkeeping -------------------------------------------------------------------------
    seed: int = opt(42, "Seed for weights init order, data order, noise and dropout (rank-offset per process).")
    log_every: int = opt(10, "Log the loss every N optimizer steps.")
    checkpoint_every: int = opt(0, "Save a resumable checkpoint every N optimizer steps (0 = never).")
    keep_last: int = opt(2, "Keep only the newest K checkpoints (0 = keep all).")
    resume: str = opt("", "Continue from 'latest' (the newest checkpoint in output_dir/checkpoints; there must be one), 'auto' (the newest if any, else start fresh) or a checkpoint folder; empty = start fresh.")
    overwrite: bool = opt(False, "Start fresh even if output_dir holds another run, replacing that run's files (a shared cache/ is kept); without it such a start is refused.")
    trust_checkpoint_pickles: bool = opt(False, "Resume from a checkpoint whose files hold pickled Python objects (older instructsd); a pickle can run code, so only for checkpoints you wrote yourself.")
    validation_every: int = opt(0, "Edit the fixed validation subset every N optimizer steps and log PSNR/SSIM (0 = never).")
    validation: ValidationSettings = opt(ValidationSettings(), "How in-training validation edits (the edit function's sampling settings, as `instructsd edit`), what it measures, sweeps and picks (issue 16).")
    report_to: Optional[Literal["tensorboard", "wandb", "all", "none"]] = opt(None, "Trackers that also get the loss, learning rate, gradient norm, validation metrics and grids (losses.jsonl and validation.jsonl are always written): tensorboard (output_dir/tensorboard), wandb, all, none; null = tensorboard when installed.")
    num_validation_images: int = opt(4, "Validation images per task in the fixed in-training validation subset (spread over the split).")

    # Keys that moved; the old spelling is refused with the new one named.
    MOVED: ClassVar[dict[str, str]] = {
        "validation_steps": "validation.num_inference_steps", "validation_image_guidance": "validation.image_guidance_scale",
        "validation_guidance": "validation.guidance_scale", "validation_scheduler": "validation.scheduler"}

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
        need(self.checkpoint_every >= 0 and self.keep_last >= 0, "checkpoint_every and keep_last must be >= 0")
        need(self.validation_every >= 0, "validation_every must be >= 0")
        need(isinstance(self.validation, ValidationSettings), "validation must be a mapping of its keys")
        need(self.lora_rank >= 0, "lora_rank must be >= 0")
        need(isinstance(self.lora_target_modules, list) and len(self.lora_target_modules) > 0
             and all(isinstance(m, str) for m in self.lora_target_modules),
             f"lora_target_modules must be a non-empty list of module names, got {self.lora_target_modules!r}")
        need(0 <= self.max_bad_fraction <= 1, "max_bad_fraction must be in [0, 1]")
        need(self.shuffle_buffer >= 0, "shuffle_buffer must be >= 0")
        need(not (self.streaming and self.cache_latents),
             "streaming=true and cache_latents=true do not combine: the cache writes every training row's latents to disk, "
             "which streaming exists to avoid; stream without the cache, or cache a dataset that fits on disk")
        need(not (self.streaming and self.task_weights),
             "task_weights needs every task's row count, which a stream does not have; with streaming=true mix the tasks "
             "when building the shards (a mixture file for `instructsd data build`), or use streaming=false")
        need(self.bucket_step >= 8 and self.bucket_step % 8 == 0, f"bucket_step must be a positive multiple of 8, got {self.bucket_step}")
        need(self.bucket_area is None or self.bucket_area >= self.bucket_step ** 2,
             f"bucket_area must be at least bucket_step² = {self.bucket_step ** 2}, got {self.bucket_area}")
        need(not (self.streaming and self.aspect_buckets),
             "streaming=true and aspect_buckets=true do not combine: buckets are assigned from every row's image size "
             "before training, which a stream does not have; use streaming=false, or build square shards")
        need(self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma must be > 0 (or null)")
        need(self.noise_offset >= 0, "noise_offset must be >= 0")
        need(self.edit_region_weight >= 0 and self.keep_region_weight >= 0 and self.edit_region_weight + self.keep_region_weight > 0,
             "edit_region_weight and keep_region_weight must be >= 0 and not both 0")
        need(not self.cache_latents or (self.edit_region_weight, self.keep_region_weight) == (1, 1),
             "edit_region_weight/keep_region_weight need the pixels of each pair (the edit mask), which cache_latents=true "
             "does not keep; set cache_latents=false or both weights to 1")
        need(not self.validation.final_is_best or self.validation_every > 0,
             "validation.final_is_best=true needs validation_every > 0 (the best is picked among validations)")
        if self.task_weights is not None:
            need(isinstance(self.task_weights, dict) and len(self.task_weights) > 0
                 and all(isinstance(v, (int, float)) and v >= 0 for v in self.task_weights.values())
                 and sum(self.task_weights.values()) > 0,
                 f"task_weights must map task names to non-negative numbers, got {self.task_weights!r}")
        total = self.drop_text_prob + self.drop_image_prob + self.drop_both_prob
        need(total <= 1, f"drop_text_prob + drop_image_prob + drop_both_prob must be <= 1, got {total:g}")

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step on one process."""
        return self.train_batch_size * self.gradient_accumulation_steps
