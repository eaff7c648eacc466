"""Configs: every preset loads, layering works, and bad keys or values fail clearly."""

from __future__ import annotations

import pytest

from instructsd.config import load_config, parse_overrides, presets, save_config
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_shipped_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(TrainConfig, name)
    again = load_config(TrainConfig, save_config(cfg, tmp_path / "config.yaml"))
    assert again == cfg


def test_sd15_256_is_the_posts_recipe():
    cfg = load_config(TrainConfig, "sd15-256")
    assert (cfg.resolution, cfg.train_batch_size, cfg.gradient_accumulation_steps) == (256, 2, 4)
    assert (cfg.learning_rate, cfg.lr_scheduler, cfg.max_train_steps) == (5e-5, "constant", 15000)
    assert cfg.use_ema and cfg.mixed_precision == "fp16" and cfg.gradient_checkpointing
    assert cfg.drop_text_prob == cfg.drop_image_prob == cfg.drop_both_prob == 0.05


def test_overrides_win_over_the_file_and_are_typed():
    cfg = load_config(TrainConfig, "tiny-cpu", ["learning_rate=3e-4", "use_ema=true", "max_train_steps=7", "prediction_type=v_prediction"])
    assert cfg.learning_rate == 3e-4 and cfg.use_ema is True and cfg.max_train_steps == 7
    assert cfg.prediction_type == "v_prediction"
    assert parse_overrides(["seed=3", "base_model=runs/x"]) == {"seed": 3, "base_model": "runs/x"}


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rat: 1e-4\n")
    with pytest.raises(InstructSDError, match=r"unknown config key 'learning_rat' in .*bad.yaml"):
        load_config(TrainConfig, path)
    with pytest.raises(InstructSDError, match="unknown config key 'lr'"):
        load_config(TrainConfig, "tiny-cpu", ["lr=1"])


@pytest.mark.parametrize("override, message", [
    ("train_batch_size=two", "train_batch_size': expected int"),
    ("learning_rate=fast", "learning_rate': expected a number"),
    ("lr_scheduler=exponential", "not one of constant"),
    ("resolution=100", "multiple of 8"),
    ("drop_both_prob=0.95", "must be <= 1"),
    ("ema_decay=1.5", "ema_decay must be in"),
    ("seed", "key=value"),
])
def test_bad_values_fail_with_the_key_named(override, message):
    with pytest.raises(InstructSDError, match=message):
        load_config(TrainConfig, "tiny-cpu", [override])


def test_missing_config_file_lists_presets():
    with pytest.raises(InstructSDError, match="tiny-cpu"):
        load_config(TrainConfig, "no-such-preset")


def test_saved_config_with_mappings_and_lists_reloads_identically(tmp_path):
    cfg = load_config(TrainConfig, "tiny-cpu", ["task_weights={denoise: 1.0, lowlight: 2.5}", "max_train_samples=7"])
    assert cfg.task_weights == {"denoise": 1.0, "lowlight": 2.5}
    assert load_config(TrainConfig, save_config(cfg, tmp_path / "config.yaml")) == cfg
