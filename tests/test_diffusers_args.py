"""`instructsd train --from-diffusers-args`: the reference script's command line, translated and run."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk

from instructsd.cli import run
from instructsd.config import load_config
from instructsd.data.write import build_mixture
from instructsd.data.mixture import parse_mixture
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.diffusers_args import (
    FLAGS,
    Context,
    config_from_tokens,
    dropout_probs,
    generated_table_in,
    migration_table_markdown,
    translate,
)
from instructsd.train.objective import DropoutProbs, conditioning_dropout

from conftest import photo

ROOT = Path(__file__).resolve().parents[1]

# Every flag of diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py, in its order
# (diffusers main at 0.40.0.dev0). A flag added there must be added to FLAGS, with its meaning.
SCRIPT_FLAGS = """
--pretrained_model_name_or_path --revision --variant --dataset_name --dataset_config_name --train_data_dir
--original_image_column --edited_image_column --edit_prompt_column --val_image_url --validation_prompt
--num_validation_images --validation_epochs --max_train_samples --output_dir --cache_dir --seed --resolution
--center_crop --random_flip --train_batch_size --num_train_epochs --max_train_steps --gradient_accumulation_steps
--gradient_checkpointing --learning_rate --scale_lr --lr_scheduler --lr_warmup_steps --conditioning_dropout_prob
--use_8bit_adam --allow_tf32 --use_ema --non_ema_revision --dataloader_num_workers --adam_beta1 --adam_beta2
--adam_weight_decay --adam_epsilon --max_grad_norm --push_to_hub --hub_token --hub_model_id --logging_dir
--mixed_precision --report_to --local_rank --checkpointing_steps --checkpoints_total_limit --resume_from_checkpoint
--enable_xformers_memory_efficient_attention
""".split()

# The post's launch lines (huggingface/instruction-tuned-sd README, linked from the post as "our code"),
# with its shell variables filled in: cartoonization, and low-level image processing with its columns.
POST_FLAGS = """
  --use_ema --enable_xformers_memory_efficient_attention
  --resolution=256 --random_flip
  --train_batch_size=2 --gradient_accumulation_steps=4 --gradient_checkpointing
  --max_train_steps=15000
  --checkpointing_steps=5000 --checkpoints_total_limit=1
  --learning_rate=5e-05 --lr_warmup_steps=0
  --mixed_precision=fp16
  --val_image_url="https://hf.co/datasets/diffusers/diffusers-images-docs/resolve/main/mountain.png"
  --validation_prompt="Generate a cartoonized version of the natural image"
  --seed=42 --output_dir={out} --report_to=wandb --push_to_hub
"""
CARTOONIZATION = "--pretrained_model_name_or_path={model} --dataset_name=instruction-tuning-sd/cartoonization" + POST_FLAGS
LOW_LEVEL = ("--pretrained_model_name_or_path={model} --dataset_name=instruction-tuning-sd/low-level-image-proc "
             '--original_image_column="input_image" --edit_prompt_column="instruction" --edited_image_column="ground_truth_image"'
             + POST_FLAGS)


def _flags(text: str, **values: str) -> list[str]:
    return shlex.split(text.format(**values))


# --- the table and the docs -----------------------------------------------------------------


def test_the_table_has_every_flag_of_the_script_once_and_only_real_keys():
    assert [f.name for f in FLAGS] == SCRIPT_FLAGS
    keys = {f.name for f in __import__("dataclasses").fields(TrainConfig)}
    for flag in FLAGS:
        assert (flag.key is None) == (flag.status != "mapped"), flag.name
        if flag.key:
            assert set(flag.key.split(", ")) <= keys, flag.name
        if flag.status != "mapped":
            assert flag.note, f"{flag.name} is {flag.status} without a reason"


def test_the_docs_hold_exactly_the_generated_migration_table():
    assert generated_table_in(ROOT / "docs" / "training.md") == migration_table_markdown(), (
        "regenerate with: python -m instructsd.train.diffusers_args --update-doc docs/training.md")
    assert "drop_both_prob" in migration_table_markdown() and "`--push_to_hub` (off) | ignored" in migration_table_markdown()


# --- the post's commands ----------------------------------------------------------------------


@pytest.mark.parametrize("command, model, columns", [
    (CARTOONIZATION, "runwayml/stable-diffusion-v1-5", ("input_image", "edit_prompt", "edited_image")),
    (LOW_LEVEL, "timbrooks/instruct-pix2pix", ("input_image", "instruction", "ground_truth_image")),
])
def test_the_posts_commands_give_the_posts_recipe_without_dropout(command, model, columns):
    cfg, translation = config_from_tokens(_flags(command, model=model, out="cartoonization-finetuned"))
    assert (cfg.base_model, cfg.output_dir) == (model, "cartoonization-finetuned")
    assert (cfg.input_column, cfg.prompt_column, cfg.edited_column) == columns
    assert cfg.dataset.startswith("instruction-tuning-sd/")
    # Everything else is the sd15-256 preset, apart from what the commands set differently: they checkpoint
    # every 5,000 steps keeping one (as the preset does), report to W&B, do not resume by themselves, and — having
    # no --conditioning_dropout_prob — drop nothing.
    preset = load_config(TrainConfig, "sd15-256", [f"base_model={model}", f"dataset={cfg.dataset}",
                                                   f"output_dir={cfg.output_dir}", f"input_column={columns[0]}",
                                                   f"prompt_column={columns[1]}", f"edited_column={columns[2]}"])
    differ = {k: (getattr(cfg, k), getattr(preset, k)) for k in vars(cfg) if getattr(cfg, k) != getattr(preset, k)}
    assert differ == {"resume": ("", "auto"), "report_to": ("wandb", None),
                      "drop_text_prob": (0.0, 0.05), "drop_image_prob": (0.0, 0.05), "drop_both_prob": (0.0, 0.05),
                      "log_every": (10, 50)}
    assert translation.ignored == ["--val_image_url", "--validation_prompt", "--push_to_hub",
                                   "--enable_xformers_memory_efficient_attention"]
    report = translation.report()
    assert "--train_batch_size 2 -> train_batch_size=2" in report
    assert "--checkpoints_total_limit 1 -> keep_last=1" in report
    assert "--conditioning_dropout_prob not given -> drop_text_prob=0.0 drop_image_prob=0.0 drop_both_prob=0.0" in report
    assert "--push_to_hub -> ignored: upload the trained model yourself: `hf upload cartoonization-finetuned" in report


# --- defaults, computed values, refusals --------------------------------------------------------


def test_absent_flags_take_the_scripts_defaults_and_say_so():
    # 37 rows, batch 4, accumulation 3, 2 processes: ceil(ceil(ceil(37 / 4) / 2) / 3) = 2 steps per epoch.
    t = translate(["--pretrained_model_name_or_path", "m", "--dataset_name", "d", "--train_batch_size", "4",
                   "--gradient_accumulation_steps", "3", "--num_train_epochs", "3"],
                  Context(num_processes=2, count_rows={"d": 37}.__getitem__))
    assert t.values["max_train_steps"] == 3 * 2
    expected = {"random_flip": False, "learning_rate": 1e-4, "lr_warmup_steps": 500, "checkpoint_every": 500,
                "keep_last": 0, "output_dir": "instruct-pix2pix-model", "drop_text_prob": 0.0, "seed": 42}
    assert {k: t.values[k] for k in expected} == expected
    assert "mixed_precision" not in t.values  # left to accelerate, as the script does
    report = t.report()
    assert "--learning_rate 0.0001 (script default) -> learning_rate=0.0001" in report
    assert "--lr_warmup_steps 500 (script default) -> lr_warmup_steps=500 — no effect with the constant schedule" in report
    assert "--random_flip not given -> random_flip=false" in report
    assert "--seed not given -> seed=42 — the script stops without --seed" in report
    assert "--train_batch_size 16" not in report and "--adam_beta1" not in report  # given, or the same as ours
    # Without a row count (a hub id) the epochs cannot become steps: the error says what to pass.
    with pytest.raises(InstructSDError, match="--num_train_epochs: needs the training split's row count; give --max_train_steps"):
        translate(["--pretrained_model_name_or_path", "m", "--dataset_name", "d"])


def test_computed_and_clamped_values_follow_the_script():
    base = ["--pretrained_model_name_or_path=m", "--dataset_name=d", "--max_train_steps=10"]
    t = translate(base + ["--scale_lr", "--learning_rate=1e-5", "--train_batch_size=4", "--gradient_accumulation_steps=2",
                          "--num_train_epochs=7"], Context(num_processes=3))
    assert t.values["learning_rate"] == pytest.approx(1e-5 * 4 * 2 * 3) and t.values["max_train_steps"] == 10
    assert "--num_train_epochs 7 -> no effect: --max_train_steps is given" in t.report()
    # The script prunes to limit - 1 before saving, so a limit of 0 keeps one checkpoint.
    assert translate(base + ["--checkpoints_total_limit=0"]).values["keep_last"] == 1
    assert translate(base + ["--checkpoints_total_limit=3"]).values["keep_last"] == 3
    assert translate(base + ["--resume_from_checkpoint=latest"]).values["resume"] == "latest"
    assert translate(base + ["--report_to=none"]).values["report_to"] == "none"
    assert translate(base + ["--revision=main", "--pretrained_model=n"]).values["base_model"] == "n"  # abbreviations, as argparse


def test_flags_that_cannot_be_honoured_stop_the_run_all_named():
    with pytest.raises(InstructSDError) as err:
        translate(["--pretrained_model_name_or_path=m", "--dataset_name=d", "--max_train_steps=1", "--revision=fp16",
                   "--lr_scheduler=polynomial", "--report_to=comet_ml", "--resume_from_checkpoint=checkpoint-500",
                   "--conditioning_dropout_prob=1.5"])
    message = str(err.value)
    for flag in ("--revision", "--lr_scheduler: 'polynomial'", "--report_to: 'comet_ml'", "--resume_from_checkpoint",
                 "--conditioning_dropout_prob: 1.5"):
        assert flag in message
    with pytest.raises(InstructSDError, match="--train_data_dir: instructsd reads a saved dataset folder, not an imagefolder"):
        translate(["--pretrained_model_name_or_path=m", "--train_data_dir=photos", "--max_train_steps=1"])


def test_unknown_flags_and_missing_required_ones_are_errors(capsys):
    with pytest.raises(InstructSDError, match="has no flag --lora_rank 4"):
        translate(["--pretrained_model_name_or_path=m", "--dataset_name=d", "--lora_rank", "4"])
    with pytest.raises(InstructSDError, match="--pretrained_model_name_or_path is required"):
        translate(["--dataset_name=d"])
    with pytest.raises(InstructSDError, match="argument --resolution: invalid int value: 'big'"):
        translate(["--pretrained_model_name_or_path=m", "--dataset_name=d", "--resolution=big"])
    with pytest.raises(InstructSDError, match="'tiny-cpu': with --from-diffusers-args"):
        config_from_tokens(["tiny-cpu", "--pretrained_model_name_or_path=m"])
    assert run(["train", "--from-diffusers-args", "--", "--pretrained_model_name_or_path=m", "--dataset_name=d",
                "--max_train_steps=1", "--use_xformers"]) == 1
    assert "train_instruct_pix2pix.py has no flag --use_xformers" in capsys.readouterr().err


# --- conditioning dropout ---------------------------------------------------------------------


def _script_rule(r: np.ndarray, p: float) -> tuple[float, float, float]:
    """Shares of (text only, image only, both) under the script's masks for draws r."""
    drop_text = r < 2 * p
    drop_image = (r >= p) & (r < 3 * p)
    return (float(np.mean(drop_text & ~drop_image)), float(np.mean(drop_image & ~drop_text)), float(np.mean(drop_text & drop_image)))


@pytest.mark.parametrize("p", [0.0, 0.05, 0.1, 0.2, 1 / 3, 0.4, 0.5, 0.75, 1.0])
def test_dropout_mapping_reproduces_the_scripts_rule(p):
    grid = (np.arange(1_000_000) + 0.5) / 1_000_000  # r ~ U[0, 1) evaluated exactly on a fine grid
    assert dropout_probs(p) == pytest.approx(_script_rule(grid, p), abs=2e-6)
    # instructsd's own sampler with the mapped probabilities gives the script's frequencies.
    text, image, both = dropout_probs(p)
    n = 200_000
    drop_text, drop_image = conditioning_dropout(n, DropoutProbs(text=text, image=image, both=both), torch.Generator().manual_seed(0))
    ours = ((drop_text & ~drop_image).float().mean().item(), (drop_image & ~drop_text).float().mean().item(),
            (drop_text & drop_image).float().mean().item())
    script = _script_rule(torch.rand(n, generator=torch.Generator().manual_seed(1)).numpy(), p)
    for a, b in zip(ours, script):
        assert abs(a - b) <= 5 * math.sqrt(0.25 / n) * math.sqrt(2)


def test_dropout_flag_sets_the_three_keys():
    cfg, _ = config_from_tokens(["--pretrained_model_name_or_path=m", "--dataset_name=d", "--max_train_steps=1",
                                 "--conditioning_dropout_prob=0.05"])
    assert (cfg.drop_text_prob, cfg.drop_image_prob, cfg.drop_both_prob) == (0.05, 0.05, 0.05)
    cfg, _ = config_from_tokens(["--pretrained_model_name_or_path=m", "--dataset_name=d", "--max_train_steps=1",
                                 "--conditioning_dropout_prob=0.4"])  # intervals clipped at 1: 0.4 / 0.2 / 0.4
    assert (cfg.drop_text_prob, cfg.drop_image_prob, cfg.drop_both_prob) == (0.4, 0.2, 0.4)


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cartoon_dataset(tmp_path_factory) -> Path:
    """The builder's cartoonization pairs under the post's column names (original_image, edit_prompt, cartoonized_image)."""
    photos = tmp_path_factory.mktemp("cartoon-photos")
    for i in range(4):
        photo(i, (48, 40)).save(photos / f"p{i}.png")
    mix = {"seed": 0, "size": 32, "min_size": 32, "chunk_size": 4, "val_fraction": 0.25,
           "columns": {"input_image": "original_image", "edited_image": "cartoonized_image"},
           "components": [{"task": "cartoonize", "source": {"folder": str(photos)}, "teacher": "cartoonizer", "count": 4}]}
    out = tmp_path_factory.mktemp("cartoon") / "data"
    built = build_mixture(parse_mixture(mix), out, progress=False)
    assert built["train"].column_names[:3] == ["original_image", "edit_prompt", "cartoonized_image"]
    return out


def _run_flags(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", model, "--dataset_name", str(data), "--original_image_column", "original_image",
            "--edit_prompt_column", "edit_prompt", "--edited_image_column", "cartoonized_image", "--resolution", "32",
            "--train_batch_size", "2", "--max_train_steps", "2", "--conditioning_dropout_prob", "0.05", "--seed", "42",
            "--output_dir", str(out), "--enable_xformers_memory_efficient_attention", "--report_to", "none", *extra]


def test_the_command_line_trains_in_process(tiny_model, cartoon_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = run(["train", "--from-diffusers-args", "log_every=1", "--", *_run_flags(tiny_model, cartoon_dataset, out, "--random_flip")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"--original_image_column original_image -> input_column=original_image" in printed.out
    assert "--conditioning_dropout_prob 0.05 -> drop_text_prob=0.05 drop_image_prob=0.05 drop_both_prob=0.05" in printed.out
    assert "ignored (no effect in instructsd): --enable_xformers_memory_efficient_attention" in printed.out
    assert "key=value overrides (applied last): log_every=1" in printed.out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["input_column"], saved["edited_column"], saved["prompt_column"]) == ("original_image", "cartoonized_image", "edit_prompt")
    assert (saved["learning_rate"], saved["gradient_accumulation_steps"], saved["random_flip"]) == (1e-4, 1, True)
    assert (saved["checkpoint_every"], saved["keep_last"], saved["log_every"]) == (500, 0, 1)
    losses = (out / "losses.jsonl").read_text().splitlines()
    assert len(losses) == 2
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_num_train_epochs_counts_the_saved_split(tiny_model, cartoon_dataset, tmp_path):
    flags = _run_flags(tiny_model, cartoon_dataset, tmp_path / "r")
    at = flags.index("--max_train_steps")
    del flags[at:at + 2]
    cfg, translation = config_from_tokens([*flags, "--num_train_epochs", "3", "--gradient_accumulation_steps", "2"])
    rows = load_from_disk(str(cartoon_dataset))["train"].num_rows
    per_epoch = math.ceil(math.ceil(rows / 2) / 2)  # batch 2, one process, accumulation 2, partial batches counted
    assert cfg.max_train_steps == 3 * per_epoch
    assert f"3 epochs × {per_epoch} optimizer step(s) per epoch ({rows} rows" in translation.report()


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI not installed")
def test_the_command_line_runs_under_accelerate_launch(tiny_model, cartoon_dataset, tmp_path):
    out = tmp_path / "launched"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "instructsd.cli", "train", "--from-diffusers-args", "--",
           *_run_flags(tiny_model, cartoon_dataset, out, "--scale_lr")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--scale_lr -> learning_rate=0.0002" in proc.stdout  # 1e-4 × accumulation 1 × batch 2 × 1 process
    assert (out / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
