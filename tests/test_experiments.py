"""The post's experiments as recipes: every shipped YAML loads; (a) runs end to end on tiny models."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from conftest import TEST_SPEC

from instructsd.cli import run
from instructsd.errors import InstructSDError
from instructsd.eval.provenance import model_hashes
from instructsd.recipes.experiment import experiment_configs, load_experiment, train_config


def test_every_shipped_experiment_config_loads(tmp_path) -> None:
    names = set(experiment_configs())
    assert {"ip2p-vs-sd", "ip2p-vs-sd-full", "cartoonizer", "lowlevel-mixture"} <= names
    for name in names:
        cfg = load_experiment(name)
        # Each stage's training config resolves and validates too.
        train_cfg = train_config(cfg, "some/model", tmp_path / "data", tmp_path / "out", stage=1)
        assert train_cfg.max_train_steps == cfg.steps_per_stage and train_cfg.seed == cfg.seed + 1
    full = load_experiment("ip2p-vs-sd-full")
    assert full.starts == {"from-ip2p": "timbrooks/instruct-pix2pix", "from-sd": "runwayml/stable-diffusion-v1-5"}


def test_experiment_config_errors_name_the_key() -> None:
    with pytest.raises(InstructSDError, match="unknown experiment 'nope'"):
        load_experiment("nope")
    with pytest.raises(InstructSDError, match="train_overrides may not set max_train_steps"):
        load_experiment("ip2p-vs-sd", ["train_overrides={max_train_steps: 3}"])
    with pytest.raises(InstructSDError, match="tiny:8 or tiny:4"):
        load_experiment("ip2p-vs-sd", ["starts={a: 'tiny:3'}"])
    with pytest.raises(InstructSDError, match="unknown config key 'stagez'"):
        load_experiment("ip2p-vs-sd", ["stagez=2"])
    # TrainConfig keys are typed and checked when the experiment is loaded, before any training.
    with pytest.raises(InstructSDError, match="config key 'resolution': expected int, got 'big'"):
        load_experiment("ip2p-vs-sd", ["train_overrides={resolution: big}"])
    with pytest.raises(InstructSDError, match="unknown config key 'learnin_rate' in the experiment's train_overrides"):
        load_experiment("ip2p-vs-sd", ["train_overrides={learnin_rate: 1.0e-3}"])


def test_ip2p_vs_sd_runs_on_tiny_models(tmp_path, photo_folder) -> None:
    out = tmp_path / "exp"
    spec = ("{unet_channels: [%s], text_dim: %d, vae_channels: [%s], vocab_size: %d, sample_size: %d}"
            % (", ".join(map(str, TEST_SPEC.unet_channels)), TEST_SPEC.text_dim,
               ", ".join(map(str, TEST_SPEC.vae_channels)), TEST_SPEC.vocab_size, TEST_SPEC.sample_size))
    code = run(["experiment", "ip2p-vs-sd", f"output_dir={out}", f"images={photo_folder}", "tasks=[denoise]",
                "size=32", "crops_per_image=1", f"tiny_spec={spec}", "stages=2", "steps_per_stage=1", "fit_vae_steps=0",
                "train_overrides={resolution: 32, train_batch_size: 2}", "eval_per_task=1", "eval_steps=1"])
    assert code == 0

    # Both starts trained in two stages; the SD start had its conv_in expanded to 8 channels.
    for label in ("from-ip2p", "from-sd"):
        for stage in (1, 2):
            unet_cfg = json.loads((out / "train" / label / f"stage-{stage}" / "final" / "unet" / "config.json").read_text())
            assert unet_cfg["in_channels"] == 8
    assert json.loads((out / "models" / "from-sd" / "unet" / "config.json").read_text())["in_channels"] == 4
    # The two tiny starts share one autoencoder and text encoder, as SD 1.5 and InstructPix2Pix do.
    for part in ("vae", "text_encoder"):
        a, b = (model_hashes(out / "models" / label / part) for label in ("from-ip2p", "from-sd"))
        assert a == b

    doc = json.loads((out / "metrics.json").read_text())
    for metric in ("psnr", "ssim"):
        curves = doc["curves"][metric]
        assert [s for s, _ in curves["from-ip2p"]] == [s for s, _ in curves["from-sd"]] == [1, 2]
        assert [s for s, _ in curves["identity"]] == [1, 2]
    assert {r["method"] for r in doc["summary"]} == {"identity", "ground_truth", "from-ip2p", "from-sd"}
    assert doc["config"]["experiment"]["stages"] == 2 and doc["provenance"]["models"]["from-sd"]["sha256"]
    assert (out / "experiment.yaml").is_file()

    page = (out / "report.html").read_text(encoding="utf-8")
    HTMLParser().feed(page)
    assert "Validation curves" in page and page.count("<polyline") >= 2
