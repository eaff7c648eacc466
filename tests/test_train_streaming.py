"""Streaming training from parquet shards: exact resume, per-epoch shuffling, rank splits, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from instructsd.cli import run
from instructsd.config import load_config
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train
from instructsd.train.batches import StreamingPairs
from instructsd.train.streaming import open_stream


pytestmark = pytest.mark.usefixtures("quick_streams")  # conftest: no 5 s pause per stream, one thread


@pytest.fixture(scope="module")
def built(pairs_24px) -> Path:
    return pairs_24px


@pytest.fixture(scope="module")
def shards(built, tmp_path_factory) -> Path:
    """The training split as 3 parquet shards with arbitrary names; every third instruction deferred."""
    rows = load_from_disk(str(built))["train"]
    rows = rows.map(lambda row, i: {"edit_prompt": "" if i % 3 == 0 else row["edit_prompt"]}, with_indices=True)
    out = tmp_path_factory.mktemp("shards")
    for i in range(3):
        rows.shard(3, i, contiguous=True).to_parquet(str(out / f"part-{i}.parquet"))
    return out


def _cfg(model: str, data: Path | str, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, "tiny-cpu", [
        f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16", "train_batch_size=1",
        "lr_warmup_steps=1", "log_every=1", "streaming=true", "shuffle_buffer=4", *extra])


def _pairs(cfg: TrainConfig, rank: int = 0, world: int = 1, **kw) -> StreamingPairs:
    stream, rows = open_stream(cfg, "train")
    opts = dict(size=16, flip=False, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, input_column=cfg.input_column,
                edited_column=cfg.edited_column, prompt_column=cfg.prompt_column, task_column=cfg.task_column,
                center_crop=True, batch_size=1, rank=rank, world=world)
    return StreamingPairs(stream, rows, **{**opts, **kw})


def _epoch(pairs: StreamingPairs, epoch: int) -> list[tuple[str, str]]:
    """(row fingerprint from its pixels, prompt) per sample; flip off and centre crop make pixels a row's identity."""
    return [(hashlib.sha1(b["input_pixels"].numpy().tobytes()).hexdigest(), b["prompts"][0]) for b in pairs.batches(epoch)]


def test_streamed_resume_continues_with_exactly_the_uninterrupted_losses(tiny_model, shards, tmp_path):
    # 5 rows, one per forward pass, 2 passes per step: 4 steps cross into the second epoch, and
    # the stop at step 2 falls mid-epoch, so the resume must skip exactly the rows already used.
    common = ("max_train_steps=4", "max_train_samples=5", "gradient_accumulation_steps=2", "checkpoint_every=2")
    full = train(_cfg(tiny_model, shards, tmp_path / "full", *common), progress=False)
    part = train(_cfg(tiny_model, shards, tmp_path / "part", *common), progress=False, stop_at=2)
    assert [s for s, _ in part.losses] == [1, 2]
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert (state["epoch"], state["position"], state["rows_read"]) == (0, 4, 4)

    # The position means other rows under another shuffle buffer: refused, not silently resumed.
    with pytest.raises(InstructSDError, match=r"other data settings \(shuffle_buffer: 4 -> 2\)"):
        train(_cfg(tiny_model, shards, tmp_path / "part", *common, "resume=latest", "shuffle_buffer=2"), progress=False)

    resumed = train(_cfg(tiny_model, shards, tmp_path / "part", *common, "resume=latest"), progress=False)
    assert resumed.resumed_from.name == "step-0000002"
    assert resumed.losses == full.losses  # exact, not approximate
    a = load_file(str(tmp_path / "full" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_epoch_is_a_fresh_shuffle_split_across_processes_with_instructions_drawn_per_use(shards):
    cfg = TrainConfig(dataset=str(shards), streaming=True, shuffle_buffer=4)
    pairs = _pairs(cfg)
    first, second = _epoch(pairs, 0), _epoch(pairs, 1)
    assert _epoch(pairs, 0) == first  # the stream is a pure function of (seed, epoch)
    assert len({r for r, _ in first}) == 9 and {r for r, _ in first} == {r for r, _ in second}  # every row once
    assert [r for r, _ in first] != [r for r, _ in second]  # reshuffled each epoch

    # Deferred rows (empty edit_prompt in the shards) get a bank paraphrase at every use, never "".
    assert all(p for _, p in first + second)
    prompts = {r: p for r, p in first}
    changed = [r for r, p in second if prompts[r] != p]
    assert 0 < len(changed) <= 3  # only the 3 deferred rows can change between epochs

    # Two processes read disjoint parts of the same epoch that together cover it.
    ranks = [{r for r, _ in _epoch(_pairs(cfg, rank, 2), 0)} for rank in (0, 1)]
    assert not ranks[0] & ranks[1] and ranks[0] | ranks[1] == {r for r, _ in first}

    # max_train_samples keeps the first N rows of the files, whatever the shuffle.
    cut = _pairs(cfg, max_samples=4)
    assert len(cut) == 4 and len(_epoch(cut, 0)) == 4


def test_flips_are_drawn_per_sample_and_are_reproducible(shards):
    cfg = TrainConfig(dataset=str(shards), streaming=True, shuffle_buffer=0)
    fixed = [b["input_pixels"] for b in _pairs(cfg).batches(0)]
    flips = [b["input_pixels"] for b in _pairs(cfg, flip=True).batches(0)]
    flipped = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flips, fixed)]
    assert 0 < sum(flipped) < len(flipped)  # samples flip independently
    assert all(torch.equal(a["input_pixels"], b) for a, b in zip(_pairs(cfg, flip=True).batches(0), flips))


def test_missing_columns_in_the_shards_are_named_with_the_columns_present(tiny_model, shards, tmp_path):
    with pytest.raises(InstructSDError, match=r"lacks column\(s\) instruction .*columns: input_image, edit_prompt, edited_image"):
        train(_cfg(tiny_model, shards, tmp_path / "r", "prompt_column=instruction"), progress=False)


def test_exported_parquet_trains_streaming_with_validation_and_a_glob(tiny_model, built, tmp_path, capsys):
    out = tmp_path / "parquet"
    assert run(["data", "export-parquet", str(built), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet", "validation.parquet"]
    run_dir = tmp_path / "run"
    code = run(["train", "tiny-cpu", f"base_model={tiny_model}", f"dataset={out}", f"output_dir={run_dir}", "streaming=true",
                "max_train_steps=2", "train_batch_size=2", "resolution=16", "validation_every=2", "num_validation_images=1",
                "validation.num_inference_steps=1", "dataloader_num_workers=2"])
    assert code == 0, capsys.readouterr().err
    assert (run_dir / "final" / "model_index.json").is_file()
    assert [json.loads(line)["step"] for line in (run_dir / "validation.jsonl").read_text().splitlines()] == [2]

    # A glob names the training shards directly.
    result = train(_cfg(tiny_model, f"{out}/train*.parquet", tmp_path / "glob", "max_train_steps=1"), progress=False)
    assert len(result.losses) == 1


def test_a_saved_datasets_folder_is_not_mistaken_for_shards(tiny_model, built, tmp_path):
    with pytest.raises(InstructSDError, match=r"saved datasets folder.*instructsd data export-parquet"):
        train(_cfg(tiny_model, built, tmp_path / "r"), progress=False)


@pytest.mark.parametrize("override, message", [
    ("cache_latents=true", "streaming=true and cache_latents=true do not combine"),
    ("task_weights={denoise: 1}", "task_weights needs every task's row count"),
    ("shuffle_buffer=-1", "shuffle_buffer must be >= 0"),
])
def test_streaming_combinations_are_validated(override, message):
    with pytest.raises(InstructSDError, match=message):
        load_config(TrainConfig, "tiny-cpu", ["streaming=true", override])
