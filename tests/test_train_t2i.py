"""Mixed text-to-image + edit data (issue 18): a t2i mixture component builds, and its rows train
with the image conditioning dropped — from pixels, from the latent cache and streamed — with each
epoch's share of kinds recorded."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import load_from_disk

from conftest import photo
from instructsd.config import load_config
from instructsd.data.mixture import parse_mixture
from instructsd.data.write import build_mixture, export_parquet
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.kinds import without_t2i_images
from instructsd.train.loop import train


pytestmark = pytest.mark.usefixtures("quick_streams")  # conftest: no 5 s pause per stream, one thread


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """6 denoise pairs and 2 captioned images (weights 3:1), 24 px."""
    root = tmp_path_factory.mktemp("t2i")
    (root / "photos").mkdir()
    (root / "captioned").mkdir()
    for i in range(4):
        photo(i, (40, 32)).save(root / "photos" / f"p{i}.png")
    for i in range(2):
        photo(10 + i, (40, 32)).save(root / "captioned" / f"c{i}.png")
        (root / "captioned" / f"c{i}.txt").write_text(f"a small painting number {i}\n")
    mix = parse_mixture({"size": 24, "total": 8, "val_fraction": 0.25, "components": [
        {"task": "denoise", "source": {"folder": str(root / "photos")}, "weight": 3},
        {"t2i": {"folder": str(root / "captioned")}, "weight": 1}]})
    build_mixture(mix, root / "data", progress=False)
    return root / "data"


def test_a_t2i_component_writes_captioned_rows_with_a_black_input_all_in_train(mixed, tmp_path):
    data = load_from_disk(str(mixed))
    t2i = [row for row in data["train"] if row["task"] == "t2i"]
    assert sorted(row["edit_prompt"] for row in t2i) == ["a small painting number 0", "a small painting number 1"]
    for row in t2i:
        assert not np.asarray(row["input_image"]).any() and np.asarray(row["edited_image"]).std() > 0
    assert "t2i" not in data["validation"]["task"]

    # The other source: a datasets folder with an image and a caption column.
    table = datasets.Dataset.from_dict({"picture": [photo(30 + i, (40, 32)) for i in range(2)],
                                        "alt": ["a red kite", "a green field"]})
    table.cast_column("picture", datasets.Image()).save_to_disk(str(tmp_path / "table"))
    mix = parse_mixture({"size": 24, "components": [
        {"t2i": {"dataset": str(tmp_path / "table"), "image": "picture", "caption": "alt"}}]})
    built = build_mixture(mix, tmp_path / "from-table", progress=False)
    assert sorted(built["train"]["edit_prompt"]) == ["a green field", "a red kite"] and set(built["train"]["task"]) == {"t2i"}
    with pytest.raises(InstructSDError, match="no caption column 'caption'"):
        build_mixture(parse_mixture({"components": [{"t2i": {"dataset": str(tmp_path / "table"), "caption": "caption"}}]}),
                      tmp_path / "nope", progress=False)
    with pytest.raises(InstructSDError, match="needs 'caption'"):
        parse_mixture({"components": [{"t2i": {"dataset": "some/images"}}]})
    with pytest.raises(InstructSDError, match="takes its images from 't2i' alone"):
        parse_mixture({"components": [{"t2i": {"folder": "x"}, "source": {"folder": "x"}}]})


def test_t2i_samples_lose_exactly_their_image_latents():
    latents = torch.ones(3, 4, 2, 2)
    out = without_t2i_images(latents, ["edit", "t2i", "edit"])
    assert out[1].abs().sum() == 0 and torch.equal(out[[0, 2]], latents[[0, 2]])
    assert without_t2i_images(latents, ["edit"] * 3) is latents


def _cfg(model, data, out, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=2",
        "gradient_accumulation_steps=1", "max_train_steps=4", "log_every=1", "report_to=none", "center_crop=true",
        "random_flip=false", *extra])


def test_a_mixture_with_t2i_trains_from_pixels_the_cache_and_a_stream(tiny_model, mixed, tmp_path, capsys):
    pixels = train(_cfg(tiny_model, mixed, tmp_path / "pixels"), progress=False)
    mix = json.loads((tmp_path / "pixels" / "data_mix.json").read_text())
    # 6 training rows (4 edit: one photo's 2 rows are in validation; 2 t2i), 3 batches of 2 per epoch: epoch 0 ran whole.
    assert mix["0"] == {"samples": {"edit": 4, "t2i": 2}, "share": {"edit": 4 / 6, "t2i": 2 / 6}, "complete": True}
    assert mix["1"]["complete"] is False and sum(mix["1"]["samples"].values()) == 2
    assert "epoch 0: 6 samples: edit 66.7%, t2i 33.3%" in capsys.readouterr().out

    cached = train(_cfg(tiny_model, mixed, tmp_path / "cached", "cache_latents=true"), progress=False)
    np.testing.assert_allclose([v for _, v in cached.losses], [v for _, v in pixels.losses], rtol=1e-5)

    # What a t2i row's input image holds never reaches the model: paint it and the losses stay the same.
    data = load_from_disk(str(mixed))
    noise = photo(99, (24, 24))
    painted = data["train"].map(lambda row: {"input_image": noise if row["task"] == "t2i" else row["input_image"]})
    datasets.DatasetDict(train=painted, validation=data["validation"]).save_to_disk(str(tmp_path / "painted"))
    assert train(_cfg(tiny_model, tmp_path / "painted", tmp_path / "p2"), progress=False).losses == pixels.losses

    export_parquet(mixed, tmp_path / "shards")
    streamed = train(_cfg(tiny_model, tmp_path / "shards", tmp_path / "streamed", "streaming=true", "shuffle_buffer=4"),
                     progress=False)
    assert len(streamed.losses) == 4
    counts = json.loads((tmp_path / "streamed" / "data_mix.json").read_text())["0"]["samples"]
    assert counts == {"edit": 4, "t2i": 2}
