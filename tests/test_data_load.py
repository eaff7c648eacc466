"""One reader for train, eval and compare (issue 12): the same column keys and sources everywhere."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import photo

from instructsd.cli import run
from instructsd.data.load import Columns, load_split
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig

# The post's cartoonization dataset: no task, no source, its own column names.
POST = {"input_column": "original_image", "edited_column": "cartoonized_image", "prompt_column": "edit_prompt"}


def _post_dataset(path, rows_per_split: int = 3):
    features = datasets.Features({"original_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                                  "cartoonized_image": datasets.Image()})

    def rows(offset: int) -> datasets.Dataset:
        return datasets.Dataset.from_list(
            [{"original_image": photo(offset + i, (24, 20)), "edit_prompt": "Cartoonize the following image.",
              "cartoonized_image": photo(offset + i + 50, (24, 20))} for i in range(rows_per_split)], features=features)

    datasets.DatasetDict({"train": rows(0), "validation": rows(10)}).save_to_disk(str(path))
    return path


def test_post_columns_train_eval_and_compare_end_to_end(tmp_path, tiny_model, capsys) -> None:
    data = _post_dataset(tmp_path / "cartoon")
    keys = [f"{k}={v}" for k, v in POST.items()]
    flags = [x for k, v in POST.items() for x in (f"--{k.replace('_', '-')}", v)]

    run_dir = tmp_path / "run"
    assert run(["train", "tiny-cpu", f"base_model={tiny_model}", f"dataset={data}", f"output_dir={run_dir}", *keys,
                "max_train_steps=2", "train_batch_size=2", "resolution=16", "log_every=1"]) == 0, capsys.readouterr().err
    final = str(run_dir / "final")

    # Without the column options eval says which ones to set.
    assert run(["eval", "--model", final, "--dataset", str(data), "--out", str(tmp_path / "x"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "original_image" in err and "--input-column" in err and "input_column=" in err

    eval_dir = tmp_path / "eval"
    assert run(["eval", "--model", final, "--dataset", str(data), "--out", str(eval_dir), "--steps", "1", *flags]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["columns"]["input_column"] == "original_image"
    model = next(r for r in metrics["summary"] if r["method"] == "model" and r["task"] == "all")
    assert model["n"] == 3 and model["n_groups"] == 3  # no photo column: each row is its own

    cmp_dir = tmp_path / "compare"
    assert run(["compare", "--models", final, "--dataset", str(data), "--out", str(cmp_dir), "--steps", "1",
                "--sweep", "", "--clip", "none", "--dino", "none", "--lpips", "none", "--device", "cpu", *flags]) == 0
    doc = json.loads((cmp_dir / "metrics.json").read_text())
    assert doc["config"]["columns"]["edited_column"] == "cartoonized_image"
    assert {r["method"] for r in doc["summary"]} == {"identity", "ground_truth", "final"}
    # "Reproduce": every model's training config, found from its run folder.
    trained = doc["provenance"]["models"]["final"]["training_config"]
    assert trained["input_column"] == "original_image" and trained["max_train_steps"] == 2
    assert "training_config" in json.loads((eval_dir / "metrics.json").read_text())["provenance"]["models"]["model"]


def test_parquet_shards_read_like_the_saved_folder(tmp_path) -> None:
    saved = load_split(_post_dataset(tmp_path / "saved"), "validation", Columns(**POST))
    shards = tmp_path / "shards"
    shards.mkdir()
    for split in ("train", "validation"):
        datasets.load_from_disk(str(tmp_path / "saved" / split)).to_parquet(str(shards / f"{split}.parquet"))
    parquet = load_split(str(shards), "validation", Columns(**POST))
    assert parquet.column_names == saved.column_names and len(parquet) == len(saved)
    assert parquet[1]["original_image"].tobytes() == saved[1]["original_image"].tobytes()


def test_a_hub_id_that_cannot_be_read_names_streaming_and_the_column_keys() -> None:
    # Tests run offline (conftest), so the hub cannot be listed: the error must say what to do.
    with pytest.raises(InstructSDError) as err:
        load_split("someone/some-edit-dataset", "validation", Columns())
    text = str(err.value)
    assert "streaming=true" in text and "input_column" in text and "--input-column" in text


def test_columns_are_trainconfigs_keys() -> None:
    cfg = TrainConfig(input_column="a", edited_column="b", prompt_column="c", task_column="d")
    assert Columns.of(cfg) == Columns("a", "b", "c", "d")
    assert Columns.of(TrainConfig()) == Columns()


@pytest.mark.parametrize("progress", [True, False])
def test_cache_encoding_and_validation_show_progress_bars_unless_disabled(tmp_path, tiny_model, capfd, progress) -> None:
    from instructsd.config import load_config
    from instructsd.train.loop import train

    data = _post_dataset(tmp_path / "cartoon", rows_per_split=2)
    cfg = load_config(TrainConfig, "tiny-cpu", [
        f"base_model={tiny_model}", f"dataset={data}", f"output_dir={tmp_path / 'run'}", "resolution=16",
        "train_batch_size=2", "max_train_steps=1", "cache_latents=true", "validation_every=1", "validation.num_inference_steps=1",
        "num_validation_images=1", "report_to=none", *(f"{k}={v}" for k, v in POST.items())])
    train(cfg, progress=progress)
    err = capfd.readouterr().err
    assert ("cache latents" in err) == progress and ("validate (step 1)" in err) == progress
