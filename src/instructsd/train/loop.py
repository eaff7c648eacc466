"""The InstructPix2Pix fine-tuning loop: setup → loop → save, each a function that reads top to bottom.

Runs on one CPU, one GPU or many through ``accelerate launch``. Weights are loaded from the
same checkpoint on every process and conv_in surgery is decided from the checkpoint, so all
ranks start identical; only data order, noise and dropout are offset by rank. The data order
is a pure function of (seed, epoch) and every random stream is checkpointed, so a resumed run
continues with exactly the losses the uninterrupted run would have had.

Pixels, cached latents or streamed shards are chosen once, in setup (the batch source in
train/batches.py, the encoder in train/encoders.py); the per-batch loop is the same for all three.
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
from instructsd.models.saving import save_finetuned
from instructsd.models.surgery import ensure_instruct_unet
from instructsd.train import checkpoint
from instructsd.train.allocator import keep_freed_memory
from instructsd.train.batches import Batches, count_skipped, read_train_rows
from instructsd.train.buckets import write_bucket_record
from instructsd.train.card import write_model_card
from instructsd.train.config import TrainConfig
from instructsd.train.encoders import CachedEncoder, VAEEncoder, encoder_and_batches, freeze, place_frozen
from instructsd.train.kinds import report_kinds
from instructsd.train.objective import DropoutProbs, region_weights
from instructsd.train.step import batch_loss
from instructsd.train.tracking import RunLog, StepTimer, resolve_report_to
from instructsd.train.validation import load_best_weights

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


@dataclass
class Parts:
    """What setup built for the loop and the save; the objects change inside, the fields do not."""

    out: Path
    accelerator: Accelerator
    components: object  # models.loading's parts: the frozen VAE, text encoder and tokenizer, for validation and saving
    unet: torch.nn.Module  # prepared by accelerate (wrapped under data parallelism)
    trainable: list[torch.nn.Parameter]
    scheduler: object  # the training noise scheduler
    prediction_type: str
    expanded: bool  # conv_in was widened from a 4-channel start
    lora: bool
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: EMAModel | None
    noise_gen: torch.Generator  # noise, timesteps, dropout and target-latent draws; rank-offset, checkpointed
    probs: DropoutProbs
    encoder: VAEEncoder | CachedEncoder
    batches: Batches
    validation: object | None  # train.validation's fixed subset, or None when validation_every=0
    runlog: RunLog
    resumed: Path | None


@dataclass
class Run:
    """Where the run stands; a checkpoint saves all of it (with the weights and random streams)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # batches of this epoch read by this process
    log: list[dict] = field(default_factory=list)  # one entry per optimizer step
    bad_rows: set = field(default_factory=set)  # samples that failed to decode
    last_saved: Path | None = None
    loss_sum: float = 0.0  # over the micro-batches of the optimizer step in progress
    micro: int = 0

    def add_loss(self, gathered: torch.Tensor) -> None:
        self.loss_sum += gathered.mean().item()
        self.micro += 1

    def take_loss(self) -> float:
        """The mean loss of the optimizer step just finished; starts the next step's sum."""
        mean = self.loss_sum / self.micro
        self.loss_sum, self.micro = 0.0, 0
        return mean


def train(cfg: TrainConfig, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Fine-tune ``cfg.base_model`` on ``cfg.dataset``; returns where the pipeline was saved.

    ``stop_at`` ends the run after that optimizer step (saving a checkpoint there) without
    writing the final model — as a time-limited job does; resume it with ``resume=latest``.
    """
    cfg = _check(cfg)
    started = time.time()
    parts, run = setup(cfg, progress)
    timer = StepTimer()
    try:
        loop(cfg, parts, run, timer, stop_at, progress)
    finally:
        parts.runlog.close()
    report_kinds(parts.out, run.epoch, parts.batches.kind_counts(run.epoch, run.position), parts.accelerator.is_main_process,
                 partial=True)

    world = parts.accelerator.num_processes
    result = TrainResult(final_dir=parts.out / "final", losses=[(e["step"], e["loss"]) for e in run.log],
                         expanded_conv_in=parts.expanded, effective_batch_size=cfg.effective_batch_size * world,
                         skipped_images=len(run.bad_rows), resumed_from=parts.resumed)
    result.seconds_per_step, result.cpu_seconds_per_step = timer.per_step(run.step)
    if world > 1:
        _write_rank_record(parts.out, parts.accelerator, parts.unet, run.step * cfg.effective_batch_size)
    if stop_at is None or run.step >= cfg.max_train_steps:
        save(cfg, parts, result, started)
    result.wall_seconds = time.time() - started
    parts.accelerator.end_training()
    return result


# --- setup ------------------------------------------------------------------------------------------


def setup(cfg: TrainConfig, progress: bool = True) -> tuple[Parts, Run]:
    """Build every part of the run, restore a checkpoint when resuming, and open the run's logs."""
    out = Path(cfg.output_dir)
    # Decided before anything is written: which checkpoint continues, or whether a fresh start may
    # replace an earlier run in this folder (only with overwrite=true).
    resumed = checkpoint.resolve(cfg.resume, out, cfg.overwrite)
    trackers = resolve_report_to(cfg.report_to)
    accelerator = _accelerator(cfg, out, trackers)
    rank = accelerator.process_index
    torch.manual_seed(cfg.seed)
    data = read_train_rows(cfg, accelerator.num_processes)

    # The model: conv_in surgery, then LoRA; the frozen parts run in the autocast dtype while the
    # trained UNet keeps fp32 master weights.
    components = load_components(cfg.base_model)
    unet, expanded = ensure_instruct_unet(components.unet)
    scheduler = components.scheduler
    if cfg.prediction_type:
        scheduler.register_to_config(prediction_type=cfg.prediction_type)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    freeze(components)
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

    agree = _all_ranks(accelerator) if accelerator.num_processes > 1 else None
    encoder, batches = encoder_and_batches(cfg, data, components, accelerator, weight_dtype, progress, agree)

    optimizer = _optimizer(cfg, trainable)
    # accelerate steps the scheduler once per process per optimizer step, hence the factor.
    world = accelerator.num_processes
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * world,
                                 num_training_steps=cfg.max_train_steps * world)
    if cfg.compile:
        unet.compile()
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to("cpu" if cfg.ema_on_cpu else accelerator.device)
    noise_gen = torch.Generator(accelerator.device).manual_seed(cfg.seed + 1_000_003 * rank)
    probs = DropoutProbs(text=cfg.drop_text_prob, image=cfg.drop_image_prob, both=cfg.drop_both_prob)

    run = Run(last_saved=resumed)
    if resumed is not None:
        state = checkpoint.load(resumed, accelerator=accelerator, unet=unet, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                ema=ema, noise_gen=noise_gen, lora=lora, trust_pickles=cfg.trust_checkpoint_pickles)
        checkpoint.check_data_position(state, cfg, resumed)
        run = Run(step=state["step"], epoch=state["epoch"], position=state["position"], log=state["log"],
                  bad_rows=set(state["bad_rows"]), last_saved=resumed)

    validation = _validation_set(cfg, components, accelerator, weight_dtype)
    if accelerator.is_main_process:  # only now: a config that fails setup leaves the folder untouched (issue 17)
        if resumed is None:
            checkpoint.clear_previous_run(out)  # resolve() allowed it: empty, or overwrite=true
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        write_bucket_record(out, data.buckets, data.assigned, cfg.bucket_area or cfg.resolution ** 2, cfg.bucket_step)
    accelerator.wait_for_everyone()
    runlog = RunLog(accelerator, out, trackers, to_dict(cfg), run.log, run.step, run.bad_rows)
    return Parts(out=out, accelerator=accelerator, components=components, unet=unet, trainable=trainable,
                 scheduler=scheduler, prediction_type=scheduler.config.prediction_type, expanded=expanded, lora=lora,
                 optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema, noise_gen=noise_gen, probs=probs,
                 encoder=encoder, batches=batches, validation=validation, runlog=runlog, resumed=resumed), run


def _accelerator(cfg: TrainConfig, out: Path, trackers: list[str]) -> Accelerator:
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not torch.cuda.is_available():
        keep_freed_memory()  # 1.6x faster SD-1.5-size CPU steps: no page faults per step (train/allocator.py)
    # Launched as several processes on a machine without CUDA, accelerate needs `cpu=True` to pick
    # its gloo (MULTI_CPU) backend; without it every process would silently train alone.
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # accelerate keeps the precision in a process-wide singleton; a second run in the same process
    # (tests, the quickstart, experiments) may train in another one. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
                       cpu=cpu_ddp, log_with=trackers or None,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))


def _validation_set(cfg: TrainConfig, components, accelerator, weight_dtype: torch.dtype):
    """The fixed validation subset (None when validation_every=0); its edits need the frozen parts on the device."""
    if not cfg.validation_every:
        return None
    from instructsd.train.validation import validation_set

    place_frozen(components, accelerator.device, weight_dtype)
    if cfg.streaming:
        from instructsd.train.streaming import validation_rows

        rows = validation_rows(cfg)
    else:
        from instructsd.data.load import load_split

        rows = load_split(cfg.dataset, "validation", [cfg.input_column, cfg.edited_column, cfg.prompt_column])
    return validation_set(rows, cfg, str(accelerator.device))


# --- loop ---------------------------------------------------------------------------------------------


def loop(cfg: TrainConfig, p: Parts, run: Run, timer: StepTimer, stop_at: int | None = None, progress: bool = True) -> None:
    """Optimizer steps until max_train_steps (or ``stop_at``, with a checkpoint there), the same for every data mode:
    lr → forward/backward under accumulation → clip → step → EMA → log → validate/checkpoint."""
    accelerator, unet = p.accelerator, p.unet
    last = cfg.max_train_steps if stop_at is None else min(stop_at, cfg.max_train_steps)
    bar = tqdm(total=cfg.max_train_steps, initial=run.step, desc="train",
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    try:
        while run.step < last:
            for batch in p.batches.epoch(run.epoch, run.position):
                run.position += 1
                count_skipped(run.bad_rows, batch, len(p.batches), cfg.max_bad_fraction, p.runlog.skipped)
                if not batch["indices"]:
                    continue
                # lr: this step's rate was set when lr_scheduler stepped at the end of the previous step.
                with accelerator.accumulate(unet):
                    loss = batch_loss(cfg, unet, p.scheduler, p.encoder, batch, p.noise_gen, p.probs, p.prediction_type,
                                      weights=region_weights(cfg, batch))  # edit-region loss (issue 16)
                    gathered = accelerator.gather(loss.detach()[None])
                    _refuse_non_finite(gathered, run, accelerator.process_index, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # max_norm=inf measures the norm and scales by exactly 1
                        grad_norm = accelerator.clip_grad_norm_(p.trainable, cfg.max_grad_norm or math.inf)
                    p.optimizer.step()  # a no-op until the last micro-batch of the step (accelerate)
                    p.lr_scheduler.step()
                    p.optimizer.zero_grad(set_to_none=True)
                run.add_loss(gathered)
                if not accelerator.sync_gradients:
                    continue
                run.step += 1
                timer.step_done(run.step)
                if p.ema is not None:
                    _ema_step(p.ema, p.trainable, cfg.ema_on_cpu)
                _log_step(cfg, p, run, bar, grad_norm)
                if p.validation and run.step % cfg.validation_every == 0:
                    _validate(cfg, p, run.step, progress)
                stopping = stop_at is not None and run.step >= stop_at
                if (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or stopping:
                    run.last_saved = _save_checkpoint(cfg, p, run)
                if run.step >= last:
                    break
            else:  # the epoch ran out: the next starts at its beginning
                report_kinds(p.out, run.epoch, p.batches.kind_counts(run.epoch), accelerator.is_main_process)
                run.epoch, run.position = run.epoch + 1, 0
    except torch.OutOfMemoryError as err:
        raise InstructSDError(OOM_HINT.format(step=run.step + 1)) from err
    except RuntimeError as err:  # MPS and some CPU allocators report OOM as a plain RuntimeError
        if "out of memory" in str(err).lower():
            raise InstructSDError(OOM_HINT.format(step=run.step + 1)) from err
        raise
    finally:
        bar.close()


def _refuse_non_finite(gathered: torch.Tensor, run: Run, rank: int, batch: dict) -> None:
    """Stop at the first NaN/inf loss on any rank, naming the step, the samples and the last good checkpoint."""
    if torch.isfinite(gathered).all():
        return
    where = f"the last good checkpoint is {run.last_saved}" if run.last_saved else "no checkpoint was saved yet"
    raise InstructSDError(
        f"loss became {gathered.tolist()} at step {run.step + 1} (rank {rank} samples {batch['indices']}); "
        f"{where}. Lower learning_rate, set max_grad_norm, or use mixed_precision=bf16 instead of fp16")


def _log_step(cfg: TrainConfig, p: Parts, run: Run, bar, grad_norm) -> None:
    """One optimizer step's loss, learning rate and gradient norm to the log, the trackers and the bar."""
    entry = {"step": run.step, "loss": run.take_loss(), "lr": p.lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
    run.log.append(entry)
    shown = run.step % cfg.log_every == 0 or run.step == cfg.max_train_steps
    p.runlog.step(entry, flush=shown)
    if shown:
        window = [e["loss"] for e in run.log[-cfg.log_every:]]
        bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{entry['lr']:.2e}")
    bar.update(1)


def _save_checkpoint(cfg: TrainConfig, p: Parts, run: Run) -> Path:
    state = {**checkpoint.data_position(cfg, run.epoch, run.position), "log": run.log, "bad_rows": sorted(run.bad_rows)}
    return checkpoint.save(p.out, run.step, accelerator=p.accelerator, unet=p.unet, optimizer=p.optimizer,
                           lr_scheduler=p.lr_scheduler, ema=p.ema, noise_gen=p.noise_gen, state=state, lora=p.lora,
                           keep_last=cfg.keep_last)


# --- save ---------------------------------------------------------------------------------------------


def save(cfg: TrainConfig, p: Parts, result: TrainResult, started: float) -> None:
    """The final pipeline (EMA weights when kept; LoRA merged, the adapter saved beside it) and its model card."""
    accelerator = p.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = copy.deepcopy(accelerator.unwrap_model(p.unet)).to("cpu", torch.float32)
        if p.ema is not None:
            p.ema.copy_to([t for t in trained.parameters() if t.requires_grad])
        if cfg.validation.final_is_best:  # the best validation's weights instead (issue 16; train/validation.py)
            load_best_weights(trained, p.out)
        if p.lora:
            from instructsd.models.lora import merge_adapter, save_adapter

            result.lora_dir = save_adapter(trained, p.out / "lora", rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                           targets=list(cfg.lora_target_modules), base_model=cfg.base_model,
                                           expanded_conv_in=p.expanded, dataset=cfg.dataset,
                                           prediction_type=cfg.prediction_type,
                                           drop_safety_checker=cfg.drop_safety_checker)
            trained = merge_adapter(trained)
        # final/ is the base with new weights: its sampler, safety checker and feature extractor (issue 11).
        parts = p.components
        second = {"text_encoder_2": _cpu_fp32(parts.text_encoder_2), "tokenizer_2": parts.tokenizer_2} if parts.is_sdxl else {}
        save_finetuned(result.final_dir, cfg.base_model, trained, _cpu_fp32(parts.vae), _cpu_fp32(parts.text_encoder),
                       parts.tokenizer, drop_safety_checker=cfg.drop_safety_checker, prediction_type=cfg.prediction_type,
                       **second)
        write_model_card(result.final_dir, cfg, p.expanded, result.losses, time.time() - started,
                         p.out / "validation.jsonl")
    accelerator.wait_for_everyone()


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


def _validate(cfg: TrainConfig, p: Parts, step: int, progress: bool = True) -> None:
    """Validate on the main process with the EMA weights swapped in when kept.

    Under mixed precision the frozen VAE and text encoder hold bf16/fp16 weights while the UNet
    keeps fp32 masters, so sampling runs under the same autocast as training does.
    """
    from instructsd.train.validation import validate

    accelerator, ema = p.accelerator, p.ema
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(p.trainable)
            ema.copy_to(p.trainable)
        try:
            with accelerator.autocast():
                validate(step, accelerator.unwrap_model(p.unet), p.components, p.scheduler, p.validation, p.out, p.runlog,
                         cfg, progress)
        finally:
            if ema is not None:
                ema.restore(p.trainable)
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
