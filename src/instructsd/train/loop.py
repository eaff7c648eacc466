"""The InstructPix2Pix fine-tuning recipe: setup → train → save, readable top to bottom.

Runs on one CPU, one GPU or many through ``accelerate launch``. Weights are loaded from the
same checkpoint on every process and conv_in surgery is decided from the checkpoint, so all
ranks start identical; only data order, noise and dropout are offset by rank. The data order
is a pure function of (seed, epoch) and every random stream is checkpointed, so a resumed run
continues with exactly the losses the uninterrupted run would have had.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from instructsd.config import save_config, to_dict
from instructsd.errors import InstructSDError
from instructsd.models.loading import load_components
from instructsd.models.surgery import ensure_instruct_unet
from instructsd.models.saving import save_finetuned
from instructsd.train import checkpoint
from instructsd.train.card import write_model_card
from instructsd.train.config import TrainConfig
from instructsd.train.data import (
    CachedPairDataset,
    PairDataset,
    batch_loader,
    epoch_order,
    load_split,
    rank_batches,
    task_row_weights,
)
from instructsd.train.objective import DropoutProbs, encode_pair, instruct_pix2pix_loss
from instructsd.train.tracking import RunLog, resolve_report_to

OOM_HINT = ("out of memory at step {step}; try a smaller train_batch_size (keeping the effective batch with a larger "
            "gradient_accumulation_steps), gradient_checkpointing=true, lora_rank=8, cache_latents=true, "
            "mixed_precision=bf16/fp16, use_8bit_adam=true or ema_on_cpu=true")


@dataclass
class TrainResult:
    """Where the run wrote its model and what the loss did."""

    final_dir: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    expanded_conv_in: bool = False
    wall_seconds: float = 0.0
    effective_batch_size: int = 0  # samples per optimizer step over all processes
    skipped_images: int = 0  # rows that failed to decode and were skipped
    resumed_from: Path | None = None
    lora_dir: Path | None = None
    seconds_per_step: float = 0.0  # steady-state wall time per optimizer step (first step excluded), for benchmarks
    cpu_seconds_per_step: float = 0.0  # the same in this process's CPU time (robust on a shared machine)


class TextEmbeddings:
    """Frozen text-encoder outputs, computed once per distinct prompt and kept in memory.

    The reference script re-encodes every prompt (and the empty prompt) at every step
    although the encoder never changes; instruction datasets repeat a few prompts endlessly.
    With ``cache_latents`` it starts filled from the on-disk cache.
    """

    def __init__(self, tokenizer, text_encoder, device, cache: dict[str, torch.Tensor] | None = None):
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device
        # Kept on the CPU: a dataset with a distinct instruction per row would not fit on a GPU.
        self.cache: dict[str, torch.Tensor] = dict(cache or {})
        self.encoded = 0  # prompts run through the text encoder by this object

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            for prompt, emb in zip(missing, self.text_encoder.to(self.device)(ids)[0]):
                self.cache[prompt] = emb.cpu()
            self.encoded += len(missing)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device)


def train(cfg: TrainConfig, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``cfg.dataset``; returns where the pipeline was saved.

    ``stop_at`` ends the run after that optimizer step (saving a checkpoint there) without
    writing the final model — as a time-limited job does; resume it with ``resume=latest``.
    """
    cfg = _check(cfg)
    started = time.time()
    out = Path(cfg.output_dir)
    # Decided before anything is written: which checkpoint continues, or whether a fresh start may
    # replace an earlier run in this folder (only with overwrite=true).
    resumed = checkpoint.resolve(cfg.resume, out, cfg.overwrite)
    trackers = resolve_report_to(cfg.report_to)

    # --- setup ------------------------------------------------------------------------------
    # Launched as several processes on a machine without CUDA, accelerate needs `cpu=True` to pick
    # its gloo (MULTI_CPU) backend; without it every process would silently train alone.
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # accelerate keeps the precision in a process-wide singleton; a second run in the same process
    # (tests, the quickstart, experiments) may train in another one. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
                              cpu=cpu_ddp, log_with=trackers or None,
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        if resumed is None:
            checkpoint.clear_previous_run(out)  # resolve() allowed it: empty, or overwrite=true
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    accelerator.wait_for_everyone()
    torch.manual_seed(cfg.seed)

    columns = [cfg.input_column, cfg.edited_column, cfg.prompt_column]
    if cfg.streaming:  # parquet shards read as needed; no row count per task, no cache (config checks)
        from instructsd.train.streaming import open_stream

        stream, stream_rows = open_stream(cfg, "train")
        row_weights = None
    else:
        rows = load_split(cfg.dataset, "train", columns)
        if cfg.max_train_samples:
            rows = rows.select(range(min(cfg.max_train_samples, len(rows))))
        if len(rows) == 0:
            raise InstructSDError(f"dataset '{cfg.dataset}' has an empty train split")
        has_tasks = cfg.task_column in rows.column_names
        if cfg.task_weights and not has_tasks:
            raise InstructSDError(f"task_weights needs a '{cfg.task_column}' column in '{cfg.dataset}' (set task_column)")
        tasks = list(rows[cfg.task_column]) if has_tasks else [None] * len(rows)
        row_weights = task_row_weights(tasks, cfg.task_weights) if cfg.task_weights else None

    parts = load_components(cfg.base_model)
    unet, expanded = ensure_instruct_unet(parts.unet)
    scheduler = parts.scheduler
    if cfg.prediction_type:
        scheduler.register_to_config(prediction_type=cfg.prediction_type)
    prediction_type = scheduler.config.prediction_type

    # Frozen parts run in the autocast dtype; the trained UNet keeps fp32 master weights.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    vae, text_encoder = parts.vae.requires_grad_(False).eval(), parts.text_encoder.requires_grad_(False).eval()
    lora = cfg.lora_rank > 0
    if lora:
        from instructsd.models.lora import add_lora, trains_conv_in

        add_lora(unet, cfg.lora_rank, cfg.lora_alpha, list(cfg.lora_target_modules),
                 train_conv_in=trains_conv_in(cfg.lora_train_conv_in, expanded))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = EMAModel(trainable, decay=cfg.ema_decay) if cfg.use_ema else None

    if cfg.cache_latents:
        from instructsd.train.cache import build_or_load

        cache = build_or_load(cfg, rows, parts, accelerator.device, accelerator.is_main_process, accelerator.wait_for_everyone,
                              progress=progress)
        dataset = CachedPairDataset(cache.latents, rows[cfg.prompt_column], tasks, flip=cfg.random_flip, seed=cfg.seed)
        text = TextEmbeddings(parts.tokenizer, text_encoder, accelerator.device, cache.text)
    else:
        vae.to(accelerator.device, dtype=weight_dtype)
        text_encoder.to(accelerator.device, dtype=weight_dtype)
        if cfg.streaming:
            from instructsd.train.streaming import StreamingPairs

            dataset = StreamingPairs(stream, stream_rows, size=cfg.resolution, flip=cfg.random_flip, seed=cfg.seed,
                                     shuffle_buffer=cfg.shuffle_buffer, input_column=cfg.input_column,
                                     edited_column=cfg.edited_column, prompt_column=cfg.prompt_column,
                                     task_column=cfg.task_column, center_crop=cfg.center_crop,
                                     batch_size=cfg.train_batch_size, rank=rank, world=world,
                                     num_workers=cfg.dataloader_num_workers, max_samples=cfg.max_train_samples)
        else:
            dataset = PairDataset(rows, size=cfg.resolution, flip=cfg.random_flip, seed=cfg.seed, input_column=cfg.input_column,
                                  edited_column=cfg.edited_column, prompt_column=cfg.prompt_column,
                                  task_column=cfg.task_column, center_crop=cfg.center_crop)
        text = TextEmbeddings(parts.tokenizer, text_encoder, accelerator.device)
    null_text = text([""])  # the empty prompt, encoded once (the reference re-encodes it every step)

    optimizer = _optimizer(cfg, trainable)
    # accelerate steps the scheduler once per process per optimizer step, hence the factor.
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * world,
                                 num_training_steps=cfg.max_train_steps * world)
    if cfg.compile:
        unet.compile()
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to("cpu" if cfg.ema_on_cpu else accelerator.device)
    noise_gen = torch.Generator(accelerator.device).manual_seed(cfg.seed + 1_000_003 * rank)
    probs = DropoutProbs(cfg.drop_text_prob, cfg.drop_image_prob, cfg.drop_both_prob)

    # --- resume -----------------------------------------------------------------------------
    log: list[dict] = []
    step, epoch, position, bad_rows = 0, 0, 0, set()
    if resumed is not None:
        state = checkpoint.load(resumed, accelerator=accelerator, unet=unet, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                ema=ema, noise_gen=noise_gen, lora=lora)
        checkpoint.check_data_position(state, cfg, resumed)
        step, epoch, position, log, bad_rows = state["step"], state["epoch"], state["position"], state["log"], set(state["bad_rows"])

    validation = None
    if cfg.validation_every:
        from instructsd.train.validation import fixed_subset

        vae.to(accelerator.device, dtype=weight_dtype)
        text_encoder.to(accelerator.device, dtype=weight_dtype)
        if cfg.streaming:
            from instructsd.train.streaming import validation_rows

            val_rows = validation_rows(cfg)
        else:
            val_rows = load_split(cfg.dataset, "validation", columns)
        validation = fixed_subset(val_rows, cfg)
    runlog = RunLog(accelerator, out, trackers, to_dict(cfg), log, step)

    # --- train ------------------------------------------------------------------------------
    running, micro = 0.0, 0
    steady_from, steady_cpu, steady_step = None, 0.0, 0
    bar = tqdm(total=cfg.max_train_steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process),
               dynamic_ncols=True)
    last_saved = resumed
    try:
        while step < cfg.max_train_steps and (stop_at is None or step < stop_at):
            if cfg.streaming:  # the epoch's stream, its first `position` batches read but not decoded
                loader = dataset.batches(epoch, position, _all_ranks(accelerator) if world > 1 else None)
            else:
                dataset.set_epoch(epoch)
                batches = rank_batches(epoch_order(len(dataset), cfg.seed, epoch, row_weights), cfg.train_batch_size, rank, world)
                loader = batch_loader(dataset, batches[position:], cfg.dataloader_num_workers)
            for batch in loader:
                position += 1
                bad_rows.update(batch["bad"])
                if len(bad_rows) > cfg.max_bad_fraction * len(dataset):
                    raise InstructSDError(
                        f"{len(bad_rows)} of {len(dataset)} training images failed to decode (rows {sorted(bad_rows)[:5]}…), "
                        f"more than max_bad_fraction={cfg.max_bad_fraction}; fix or drop them, or raise max_bad_fraction")
                if not batch["indices"]:
                    continue
                with accelerator.accumulate(unet):
                    if cfg.cache_latents:
                        from instructsd.train.cache import sample_latents

                        image_latents = batch["input_latents"].to(accelerator.device, weight_dtype)
                        latents = sample_latents(batch["target_moments"].to(accelerator.device), noise_gen)
                        latents = (latents * vae.config.scaling_factor).to(weight_dtype)
                    else:
                        image_latents, latents = encode_pair(vae, batch["input_pixels"].to(accelerator.device),
                                                             batch["edited_pixels"].to(accelerator.device), noise_gen)
                    embeddings = text(batch["prompts"]).to(weight_dtype)
                    loss = instruct_pix2pix_loss(unet, scheduler, latents, image_latents, embeddings, null_text, probs, noise_gen,
                                                 prediction_type, snr_gamma=cfg.snr_gamma, noise_offset=cfg.noise_offset)
                    gathered = accelerator.gather(loss.detach()[None])
                    if not torch.isfinite(gathered).all():
                        where = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was saved yet"
                        raise InstructSDError(
                            f"loss became {gathered.tolist()} at step {step + 1} (rank {rank} samples {batch['indices']}); "
                            f"{where}. Lower learning_rate, set max_grad_norm, or use mixed_precision=bf16 instead of fp16")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # max_norm=inf measures the norm and scales by exactly 1
                        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                running += gathered.mean().item()
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if steady_from is None:
                    steady_from, steady_cpu, steady_step = time.perf_counter(), time.process_time(), step
                if ema is not None:
                    _ema_step(ema, trainable, cfg.ema_on_cpu)
                entry = {"step": step, "loss": running / micro, "lr": lr_scheduler.get_last_lr()[0],
                         "grad_norm": float(grad_norm)}
                running, micro = 0.0, 0
                log.append(entry)
                shown = step % cfg.log_every == 0 or step == cfg.max_train_steps
                runlog.step(entry, flush=shown)
                if shown:
                    window = [e["loss"] for e in log[-cfg.log_every:]]
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{entry['lr']:.2e}")
                bar.update(1)
                if validation and step % cfg.validation_every == 0:
                    _validate(step, unet, ema, trainable, parts, scheduler, validation, runlog, out, cfg, accelerator,
                              progress)
                stopping = stop_at is not None and step >= stop_at
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
                    state = {**checkpoint.data_position(cfg, epoch, position), "log": log, "bad_rows": sorted(bad_rows)}
                    last_saved = checkpoint.save(out, step, accelerator=accelerator, unet=unet, optimizer=optimizer,
                                                 lr_scheduler=lr_scheduler, ema=ema, noise_gen=noise_gen, state=state,
                                                 lora=lora, keep_last=cfg.keep_last)
                if step >= cfg.max_train_steps or stopping:
                    break
            else:  # the epoch ran out: the next starts at its beginning
                epoch, position = epoch + 1, 0
    except torch.OutOfMemoryError as err:
        raise InstructSDError(OOM_HINT.format(step=step + 1)) from err
    except RuntimeError as err:  # MPS and some CPU allocators report OOM as a plain RuntimeError
        if "out of memory" in str(err).lower():
            raise InstructSDError(OOM_HINT.format(step=step + 1)) from err
        raise
    finally:
        bar.close()
        runlog.close()

    losses = [(e["step"], e["loss"]) for e in log]
    result = TrainResult(final_dir=out / "final", losses=losses, expanded_conv_in=expanded,
                         effective_batch_size=cfg.effective_batch_size * world, skipped_images=len(bad_rows),
                         resumed_from=resumed)
    if steady_from is not None and step > steady_step:
        result.seconds_per_step = (time.perf_counter() - steady_from) / (step - steady_step)
        result.cpu_seconds_per_step = (time.process_time() - steady_cpu) / (step - steady_step)
    if world > 1:
        _write_rank_record(out, accelerator, unet, step * cfg.effective_batch_size)
    if stop_at is not None and step < cfg.max_train_steps:
        result.wall_seconds = time.time() - started
        accelerator.end_training()
        return result

    # --- save -------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = copy.deepcopy(accelerator.unwrap_model(unet)).to("cpu", torch.float32)
        if ema is not None:
            ema.copy_to([p for p in trained.parameters() if p.requires_grad])
        if lora:
            from instructsd.models.lora import merge_adapter, save_adapter

            result.lora_dir = save_adapter(trained, out / "lora", rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                           targets=list(cfg.lora_target_modules), base_model=cfg.base_model,
                                           expanded_conv_in=expanded, dataset=cfg.dataset,
                                           prediction_type=cfg.prediction_type,
                                           drop_safety_checker=cfg.drop_safety_checker)
            trained = merge_adapter(trained)
        # final/ is the base with new weights: its sampler, safety checker and feature extractor (issue 11).
        save_finetuned(result.final_dir, cfg.base_model, trained, _cpu_fp32(parts.vae), _cpu_fp32(parts.text_encoder),
                       parts.tokenizer, drop_safety_checker=cfg.drop_safety_checker, prediction_type=cfg.prediction_type)
        write_model_card(result.final_dir, cfg, expanded, losses, time.time() - started, out / "validation.jsonl")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result.wall_seconds = time.time() - started
    return result


# --- the parts the loop calls ------------------------------------------------------------------


def _check(cfg: TrainConfig) -> TrainConfig:
    """Refuse what cannot run here; returns the config with the launcher's mixed precision resolved."""
    if not cfg.base_model:
        raise InstructSDError("config key 'base_model' is empty; set base_model=<hub id or folder>")
    if not cfg.dataset:
        raise InstructSDError("config key 'dataset' is empty; set dataset=<folder from `instructsd data build`>")
    cfg = dataclasses.replace(cfg, mixed_precision=resolve_mixed_precision(cfg.mixed_precision))
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InstructSDError("mixed_precision=fp16 needs a CUDA GPU; on this machine use mixed_precision=no (or bf16)")
    return cfg


def resolve_mixed_precision(configured: str | None) -> str:
    """The config's precision, else the launcher's (`accelerate launch --mixed_precision X` or
    `accelerate config`, which reach us as ACCELERATE_MIXED_PRECISION), else 'no'.

    The launcher passes 'no' when it was given nothing, so only a launcher value other than 'no'
    can conflict with the config; a conflict is refused rather than silently resolved.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() or None
    if launcher not in (None, "no", "fp16", "bf16"):
        raise InstructSDError(f"accelerate asks for mixed precision '{launcher}', which instructsd does not train in; "
                              "launch with --mixed_precision no, fp16 or bf16")
    if configured is None:
        return launcher or "no"
    if launcher not in (None, "no") and launcher != configured:
        raise InstructSDError(
            f"the config says mixed_precision={configured} but accelerate launch says --mixed_precision {launcher}; "
            f"make them agree, or drop mixed_precision from the config (null) to take the launcher's")
    return configured


def _all_ranks(accelerator):
    """``agree(ok)``: true only where every process says ok (streams can end at different rows)."""
    def agree(ok: bool) -> bool:
        return bool(accelerator.gather(torch.tensor([int(ok)], device=accelerator.device)).min())

    return agree


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise InstructSDError("use_8bit_adam=true needs bitsandbytes (CUDA): pip install 'instructsd[bnb]'") from err
        cls = bnb.optim.AdamW8bit
    return cls(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
               eps=cfg.adam_epsilon)


def _ema_step(ema: EMAModel, trainable: list[torch.nn.Parameter], on_cpu: bool) -> None:
    if not on_cpu:
        ema.step(trainable)
        return
    # EMAModel copies (rather than averages) tensors that do not require grad, so keep the flag.
    ema.step([p.detach().to("cpu").requires_grad_(True) for p in trainable])


def _validate(step, unet, ema, trainable, parts, scheduler, validation, runlog, out, cfg, accelerator, progress=True) -> None:
    """Validate on the main process with the EMA weights swapped in when kept.

    Under mixed precision the frozen VAE and text encoder hold bf16/fp16 weights while the UNet
    keeps fp32 masters, so sampling runs under the same autocast as training does.
    """
    from instructsd.train.validation import validate

    if accelerator.is_main_process:
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        try:
            with accelerator.autocast():
                validate(step, accelerator.unwrap_model(unet), parts, scheduler, validation, out, runlog, cfg, progress)
        finally:
            if ema is not None:
                ema.restore(trainable)
    accelerator.wait_for_everyone()


def _write_rank_record(out: Path, accelerator, unet, samples: int) -> None:
    """Each rank's weight digest and sample count: a check that data-parallel ranks stayed in sync."""
    digest = hashlib.sha256()
    for name, tensor in sorted(accelerator.unwrap_model(unet).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    record = {"rank": accelerator.process_index, "unet_sha256": digest.hexdigest(), "samples": samples}
    (out / "ranks" / f"rank-{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


def _cpu_fp32(module: torch.nn.Module) -> torch.nn.Module:
    """Saved weights are fp32 on CPU whatever precision trained them."""
    module = module.to("cpu")
    return module if next(module.parameters()).dtype == torch.float32 else module.to(torch.float32)
