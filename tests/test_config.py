"""Configs: every preset loads, layering works, and bad keys or values fail clearly."""

from __future__ import annotations

from pathlib import Path

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
    assert parse_overrides(["seed=3", "base_model=runs/x"], TrainConfig) == {"seed": 3, "base_model": "runs/x"}


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


# --- values are read by the field's declared type (issue 11, item 4) -------------------------

def test_mixed_precision_no_is_the_string_no_not_false():
    cfg = load_config(TrainConfig, "sd15-256", ["mixed_precision=no"])
    assert cfg.mixed_precision == "no"


@pytest.mark.parametrize("text", ["yes", "off", "no", "on", "true", "123", "1e-4", "null", "none", "~", "[a, b]"])
def test_a_text_field_keeps_the_text_verbatim(text):
    cfg = load_config(TrainConfig, "tiny-cpu", [f"output_dir={text}", f"resume={text}", f"cache_dir={text}"])
    assert cfg.output_dir == cfg.resume == cfg.cache_dir == text


@pytest.mark.parametrize("text, value", [("true", True), ("YES", True), ("On", True), ("1", True),
                                         ("false", False), ("no", False), ("OFF", False), ("0", False)])
def test_a_bool_field_takes_the_usual_words(text, value):
    assert load_config(TrainConfig, "tiny-cpu", [f"use_ema={text}"]).use_ema is value


def test_numbers_optionals_and_collections_are_read_by_type():
    cfg = load_config(TrainConfig, "tiny-cpu", [
        "learning_rate=5e-5", "max_grad_norm=2", "seed=7", "max_train_samples=null", "prediction_type=none",
        "snr_gamma=", "lora_target_modules=[to_q, to_v]", "task_weights={denoise: 1, lowlight: 0.5}",
    ])
    assert cfg.learning_rate == 5e-5 and cfg.max_grad_norm == 2.0 and isinstance(cfg.max_grad_norm, float)
    assert cfg.seed == 7 and cfg.max_train_samples is None and cfg.prediction_type is None and cfg.snr_gamma is None
    assert cfg.lora_target_modules == ["to_q", "to_v"] and cfg.task_weights == {"denoise": 1, "lowlight": 0.5}
    assert load_config(TrainConfig, "tiny-cpu", ["max_train_samples=12"]).max_train_samples == 12


@pytest.mark.parametrize("override, message", [
    ("seed=[1", r"^config key 'seed': expected int, got '\[1'$"),
    ("seed=null", "config key 'seed': expected int, got 'null'"),  # None only where the field is Optional
    ("seed=1.5", "config key 'seed': expected int, got '1.5'"),
    ("use_ema=maybe", r"config key 'use_ema': expected bool \(true/false, yes/no, on/off, 1/0\), got 'maybe'"),
    ("max_train_samples=many", "config key 'max_train_samples': expected int or null, got 'many'"),
    ("learning_rate=nan", "config key 'learning_rate': expected a finite number"),
    ("lora_target_modules=[to_q", r"config key 'lora_target_modules': '\[to_q' is not valid YAML flow syntax .*e\.g\. lora_target_modules=\[a, b\]"),
    ("lora_target_modules=to_q", "config key 'lora_target_modules': expected a list"),
    ("task_weights=[1, 2]", "config key 'task_weights': expected a mapping"),
    ("mixed_precision=No", "config key 'mixed_precision': 'No' is not one of no, fp16, bf16"),
])
def test_a_bad_override_is_one_line_naming_key_value_and_type(override, message):
    with pytest.raises(InstructSDError, match=message) as err:
        load_config(TrainConfig, "tiny-cpu", [override])
    assert "\n" not in str(err.value)


def test_a_bad_override_on_the_command_line_is_one_error_line(capsys):
    from instructsd.cli import run

    assert run(["config", "show", "tiny-cpu", "seed=[1"]) == 1
    err = capsys.readouterr().err
    assert err == "error: config key 'seed': expected int, got '[1'\n"


def test_unquoted_yaml_words_in_text_fields_are_read_as_written(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("mixed_precision: no\noutput_dir: Yes\nresume: off\nuse_ema: yes\nrandom_flip: off\n"
                    "cache_dir: 'on'\n")
    cfg = load_config(TrainConfig, path)
    assert (cfg.mixed_precision, cfg.output_dir, cfg.resume, cfg.cache_dir) == ("no", "Yes", "off", "on")
    assert cfg.use_ema is True and cfg.random_flip is False  # bool fields keep YAML's reading
    again = load_config(TrainConfig, save_config(cfg, tmp_path / "config.yaml"))
    assert again == cfg


def test_a_boolean_in_a_text_field_without_its_spelling_is_refused_or_recovered():
    # Inside a mapping (an experiment's train_overrides) the word is gone by the time the
    # field is known: a Literal recovers it when one choice is such a word, a str field asks.
    from instructsd.config import from_dict

    assert from_dict(TrainConfig, {"mixed_precision": False}).mixed_precision == "no"
    with pytest.raises(InstructSDError, match=r"config key 'resume': expected str, got the boolean true .*quote"):
        from_dict(TrainConfig, {"resume": True})
    with pytest.raises(InstructSDError, match="config key 'mixed_precision'.*boolean true"):
        from_dict(TrainConfig, {"mixed_precision": True})


# One override of every kind a TrainConfig field has: str, Literal, bool, int, float,
# Optional[int], Optional[float], Optional[Literal], list, Optional[dict].
EVERY_KIND = {
    "output_dir": ("no", "no"), "mixed_precision": ("no", "no"), "lr_scheduler": ("linear", "linear"),
    "use_ema": ("on", True), "random_flip": ("0", False), "max_train_steps": ("12", 12),
    "learning_rate": ("2e-5", 2e-5), "max_train_samples": ("null", None), "lora_alpha": ("8", 8.0),
    "prediction_type": ("v_prediction", "v_prediction"), "lora_target_modules": ("[to_q]", ["to_q"]),
    "task_weights": ("{denoise: 2}", {"denoise": 2}),
}


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_shipped_preset_loads_and_takes_overrides_of_every_type(name, tmp_path):
    base = load_config(TrainConfig, name)
    cfg = load_config(TrainConfig, name, [f"{k}={text}" for k, (text, _) in EVERY_KIND.items()])
    for key, (_, value) in EVERY_KIND.items():
        assert getattr(cfg, key) == value and type(getattr(cfg, key)) is type(value), key
    untouched = {k for k in vars(base) if k not in EVERY_KIND}
    assert {k: getattr(cfg, k) for k in untouched} == {k: getattr(base, k) for k in untouched}
    assert load_config(TrainConfig, save_config(cfg, tmp_path / "config.yaml")) == cfg


def test_every_shipped_experiment_and_the_pretrain_recipe_take_typed_overrides():
    from instructsd.recipes.experiment import experiment_configs, load_experiment, train_config
    from instructsd.recipes.pretrain_tiny import PretrainConfig

    for name in experiment_configs():
        cfg = load_experiment(name, ["clip=no", "include_pretrained=yes", "eval_per_task=none", "guidance=3",
                                     "train_overrides={mixed_precision: no}", "tasks=[denoise]"])
        assert (cfg.clip, cfg.include_pretrained, cfg.eval_per_task, cfg.guidance) == ("no", True, None, 3.0)
        assert cfg.train_overrides == {"mixed_precision": False} and cfg.tasks == ["denoise"]
        assert train_config(cfg, "base", Path("data"), Path("out"), 0).mixed_precision == "no"
    cfg = load_config(PretrainConfig, None, ["tasks=[denoise, lowlight]", "unet_channels=[8, 16]", "unet_norm_groups=null",
                                             "identity_init=off", "vae_anchor=0.5"])
    assert cfg.tasks == ("denoise", "lowlight") and cfg.unet_channels == (8, 16) and cfg.unet_norm_groups is None
    assert cfg.identity_init is False and cfg.vae_anchor == 0.5


# --- a nested config: TrainConfig's validation settings (issue 13) ---------------------------------


def test_nested_settings_layer_key_by_key_from_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("validation:\n  scheduler: ddim\n  num_inference_steps: 9\n")
    cfg = load_config(TrainConfig, path, ["validation.num_inference_steps=3", "validation.guidance_scale=2"])
    # The file's scheduler survives an override of another nested key; the untouched key keeps its default.
    assert (cfg.validation.scheduler, cfg.validation.num_inference_steps, cfg.validation.guidance_scale) == ("ddim", 3, 2.0)
    assert cfg.validation.image_guidance_scale == TrainConfig().validation.image_guidance_scale
    whole = load_config(TrainConfig, None, ["validation={scheduler: unipc}"])
    assert whole.validation.scheduler == "unipc" and isinstance(whole.validation.guidance_scale, float)
    assert cfg.validation.edit_settings().scheduler == "ddim"  # the edit function's own settings type


def test_nested_settings_save_with_a_doc_per_key_and_round_trip(tmp_path):
    cfg = load_config(TrainConfig, "quickstart", ["validation.image_guidance_scale=0.8"])
    text = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "\nvalidation:\n  # Sampling steps of each validation edit.\n  num_inference_steps: 20\n" in text
    assert "  image_guidance_scale: 0.8\n" in text
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_config_show_documents_each_nested_key(capsys):
    from instructsd.cli import run

    assert run(["config", "show", "tiny-cpu", "validation.scheduler=euler"]) == 0
    out = capsys.readouterr().out
    assert "  # Sampler: auto (Euler ancestral, or Euler for prediction_type sample) or one of" in out
    assert "  scheduler: euler\n" in out


@pytest.mark.parametrize("override, message", [
    ("validation_steps=3", r"config key 'validation_steps' is now 'validation.num_inference_steps'"),
    ("validation_scheduler=ddim", r"config key 'validation_scheduler' is now 'validation.scheduler'"),
    ("validation.steps=3", r"unknown config key 'validation.steps' .*validation.num_inference_steps"),
    ("validation.scheduler=dpm", r"config key 'validation.scheduler': 'dpm' is not one of auto, euler_ancestral"),
    ("validation.num_inference_steps=x", r"config key 'validation.num_inference_steps': expected int"),
    ("validation=3", r"config key 'validation': expected a mapping of num_inference_steps"),
])
def test_bad_nested_keys_and_moved_keys_are_named(override, message):
    with pytest.raises(InstructSDError, match=message):
        load_config(TrainConfig, "tiny-cpu", [override])


def test_a_moved_key_in_a_file_is_named_with_the_file(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("validation_guidance: 5\n")
    with pytest.raises(InstructSDError, match=r"'validation_guidance' is now 'validation.guidance_scale'.*old.yaml"):
        load_config(TrainConfig, path)


def test_the_validation_scheduler_choices_are_the_edit_functions_samplers():
    import typing

    from instructsd.edit.editor import SCHEDULERS
    from instructsd.train.config import ValidationSettings

    assert typing.get_args(typing.get_type_hints(ValidationSettings)["scheduler"]) == ("auto", *SCHEDULERS)
