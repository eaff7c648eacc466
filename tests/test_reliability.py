"""The reliability suite (issue 17, item 7): broken and awkward files through build, edit, eval and
train, and kill -9 at seeded random moments of a mixture build and of a training run.

Every input is either processed or skipped with a reason, never lost and never a traceback; every
killed run, resumed, ends exactly where an uninterrupted one does. Elsewhere, and not repeated here:
a pickle payload in a checkpoint never runs (test_checkpoint_safety.py), overwrite refusals
(test_edit_safety.py, test_model_overwrite.py, test_train_runs.py::test_nothing_of_an_earlier_run_is_lost),
and the Low list's one-liners: ``'seed=[1'`` (test_config.py), ``--out o.jpg``, an empty instruction
and a 1×1 input (test_edit_safety.py), NaN guidance in the CLI and the demo (test_guidance.py,
test_demo_privacy.py).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import photo
from instructsd.cli import run
from instructsd.config import load_config
from instructsd.data.write import build_mixture
from instructsd.errors import InstructSDError
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train
from test_edit_safety import huge_png_header

# --- the corpus ---------------------------------------------------------------------------------

# name -> (what `data build` does with it, what `edit` does, what `eval` does with it as a row)
CORPUS = {
    "truncated.png": ("skip", "fail", "skip"),
    "truncated.jpg": ("skip", "fail", "skip"),
    "empty.png": ("skip", "fail", "skip"),
    "jpeg_named.png": ("ok", "ok", "ok"),  # a JPEG behind a .png name
    "text.png": ("skip", "fail", "skip"),
    "bomb.png": ("skip", "fail", "skip"),  # a small PNG declaring 900 MP
    "dot.png": ("skip", "fail", "ok"),  # 1×1: under --size / too small to edit / scored at 8×8
    "deep16.png": ("ok", "ok", "ok"),
    "cmyk.jpg": ("ok", "ok", "ok"),
    "palette_alpha.png": ("ok", "ok", "ok"),
    "exif_rotated.jpg": ("ok", "ok", "ok"),
    "gray.png": ("ok", "ok", "ok"),
    "animated.gif": ("ok", "ok", "ok"),
    "thin.png": ("skip", "fail", "ok"),  # 4000×2
    "ünïcödé 写真.png": ("ok", "ok", "ok"),
}


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(30, (64, 48))
    png, jpg = _bytes(base, "PNG"), _bytes(base, "JPEG", quality=90)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "jpeg_named.png").write_bytes(_bytes(photo(31, (64, 48)), "JPEG"))
    (folder / "text.png").write_text("this is a note, not a picture\n")
    huge_png_header(folder / "bomb.png", 30_000, 30_000)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "dot.png")
    deep = (np.asarray(photo(32, (64, 48)).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")  # mode I;16
    photo(33, (64, 48)).convert("CMYK").save(folder / "cmyk.jpg")
    pal = photo(34, (64, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(folder / "palette_alpha.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    photo(35, (64, 48)).save(folder / "exif_rotated.jpg", exif=exif)
    photo(36, (64, 48)).convert("L").save(folder / "gray.png")
    frames = [photo(37, (48, 40)), photo(38, (48, 40))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (4000, 2), (10, 120, 200)).save(folder / "thin.png")
    photo(39, (64, 48)).save(folder / "ünïcödé 写真.png")
    assert sorted(p.name for p in folder.iterdir()) == sorted(CORPUS)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "in")


def _expected(column: int, outcome: str) -> set[str]:
    return {name for name, outcomes in CORPUS.items() if outcomes[column] == outcome}


def bomb_bytes(folder: Path, width: int, height: int) -> bytes:
    """The bytes of a small PNG declaring ``width`` × ``height`` pixels."""
    huge_png_header(folder / f"bomb-{width}x{height}.png", width, height)
    return (folder / f"bomb-{width}x{height}.png").read_bytes()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- each file through build, edit and eval ---------------------------------------------------------


def test_data_build_processes_or_skips_every_corpus_file_with_a_reason(corpus, tmp_path):
    out = tmp_path / "ds"
    assert run(["data", "build", str(out), "--images", str(corpus), "--tasks", "denoise", "--size", "16",
                "--crops-per-image", "1", "--val-fraction", "0.2", "--no-progress"]) == 0
    ds = datasets.load_from_disk(str(out))
    built = {row["source"] for split in ds.values() for row in split.select_columns(["source"])}
    skipped = {s["source"]: s["reason"] for s in _jsonl(out / "skipped.jsonl")}
    stem = lambda names: {Path(n).stem for n in names}  # noqa: E731
    assert stem(_expected(0, "ok")) == {s.rsplit("/", 1)[-1] for s in built}
    assert set(skipped) == stem(_expected(0, "skip")) and all(skipped.values())  # each with its reason
    assert "smaller than min_size" in skipped["dot"] and "smaller than min_size" in skipped["thin"]
    assert "decompression bomb" in skipped["bomb"]  # refused from its header, never decoded


def test_edit_writes_or_records_every_corpus_file(corpus, tiny_model, tmp_path, capsys):
    out = tmp_path / "edits"
    assert run(["edit", "--model", tiny_model, "--image", str(corpus), "--instruction", "denoise", "--out", str(out),
                "--steps", "1", "--highres", "off", "--max-side", "16"]) == 0  # some succeeded
    failed = {Path(f["image"]).name: f["error"] for f in _jsonl(out / "failures.jsonl")}
    written = {p.name for p in out.glob("*.png")}
    assert set(failed) == _expected(1, "fail") and all(failed.values())
    assert written == {f"{Path(n).stem.replace(' ', '_')}_i0_s0.png" for n in _expected(1, "ok")}  # names made safe
    assert Image.open(out / "exif_rotated_i0_s0.png").size == (8, 16)  # upright (48×64 fitted to 16)
    assert f"{len(failed)} input(s) failed" in capsys.readouterr().err


def _row_dataset(folder: Path, inputs: dict[str, bytes], target: bytes) -> Path:
    """A saved dataset whose validation rows hold ``inputs`` as their input images, undecoded."""
    feats = datasets.Features({"input_image": datasets.Image(), "edited_image": datasets.Image(),
                               "edit_prompt": datasets.Value("string"), "task": datasets.Value("string")})
    rows = {"input_image": [{"bytes": b, "path": None} for b in inputs.values()],
            "edited_image": [{"bytes": target, "path": None}] * len(inputs),
            "edit_prompt": ["denoise the image"] * len(inputs), "task": ["denoise"] * len(inputs)}
    split = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(folder))
    return folder


def test_eval_scores_decodable_rows_and_lists_the_rest(corpus, tiny_model, tmp_path, capsys):
    names = sorted(CORPUS)
    data = _row_dataset(tmp_path / "rows", {n: (corpus / n).read_bytes() for n in names},
                        _bytes(photo(40, (64, 48)), "PNG"))
    out = tmp_path / "eval"
    assert run(["eval", "--model", tiny_model, "--dataset", str(data), "--out", str(out), "--steps", "1"]) == 0
    skipped = {names[r["index"]]: r["reason"] for r in _jsonl(out / "skipped_rows.jsonl")}
    assert set(skipped) == _expected(2, "skip") and all(skipped.values())
    assert "DecompressionBombError" in skipped["bomb.png"]
    doc = json.loads((out / "metrics.json").read_text())
    scored = {names[r["index"]] for r in doc["per_image"] if r["method"] == "model"}
    assert scored == _expected(2, "ok")  # nothing lost: every row scored or listed
    assert len(doc["skipped_rows"]) == len(skipped)
    assert f"note: {len(skipped)} row(s) skipped because their images failed to decode" in capsys.readouterr().out

    # Every row corrupt: one clear error, non-zero exit, no traceback.
    broken = _row_dataset(tmp_path / "broken", {n: (corpus / n).read_bytes() for n in ("text.png", "bomb.png")},
                          _bytes(photo(40, (64, 48)), "PNG"))
    assert run(["eval", "--model", tiny_model, "--dataset", str(broken), "--out", str(tmp_path / "e2"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "all 2 rows of dataset" in err and "failed to decode" in err and "Traceback" not in err


# --- train: corrupt and bomb rows ------------------------------------------------------------------


def _train_argv(model, data, out, *extra) -> list[str]:
    return ["train", "tiny-cpu", f"base_model={model}", f"dataset={data}", f"output_dir={out}", "resolution=16",
            "train_batch_size=2", "lr_warmup_steps=1", "log_every=1", "report_to=none", *extra]


def test_train_skips_counts_and_lists_corrupt_and_bomb_rows(tiny_model, corpus, tmp_path, capsys):
    good = [_bytes(photo(50 + i, (32, 24)), "PNG") for i in range(4)]
    inputs = {"g0": good[0], "text": (corpus / "text.png").read_bytes(), "g1": good[1],
              "bomb": bomb_bytes(tmp_path, 20_000, 20_000),  # over 2x Pillow's limit: DecompressionBombError
              "g2": good[2], "warn_bomb": bomb_bytes(tmp_path, 10_000, 10_000),  # over 1x: a warning, made an error
              "g3": good[3]}
    data = _row_dataset(tmp_path / "rows", inputs, good[0])
    out = tmp_path / "run"
    assert run(_train_argv(tiny_model, data, out, "max_train_steps=6", "max_bad_fraction=0.5")) == 0
    listed = {list(inputs)[r["index"]]: r["reason"] for r in _jsonl(out / "skipped_rows.jsonl")}
    assert set(listed) == {"text", "bomb", "warn_bomb"}
    assert "DecompressionBombError" in listed["bomb"] and "DecompressionBombWarning" in listed["warn_bomb"]
    err = capsys.readouterr().err
    assert f"skipped 3 training row(s) whose images failed to decode; see {out / 'skipped_rows.jsonl'}" in err
    assert (out / "final").is_dir() and "Traceback" not in err

    # All rows corrupt: a clear error (not an endless loop over empty batches), non-zero exit.
    bad = _row_dataset(tmp_path / "bad", {"a": b"nope", "b": bomb_bytes(tmp_path, 20_000, 20_000)}, good[0])
    assert run(_train_argv(tiny_model, bad, tmp_path / "bad_run", "max_train_steps=2", "max_bad_fraction=1")) == 1
    err = capsys.readouterr().err
    assert "every one of the 2 training rows failed to decode" in err and "Traceback" not in err
    assert len(_jsonl(tmp_path / "bad_run" / "skipped_rows.jsonl")) == 2


def test_config_yaml_is_written_only_after_setup_succeeds(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(_train_argv(tiny_model, tmp_path / "no-such-data", out, "max_train_steps=1")) == 1
    assert not (out / "config.yaml").exists()
    assert run(_train_argv(tmp_path / "no-such-model", tmp_path / "no-such-data", out, "max_train_steps=1")) == 1
    assert not (out / "config.yaml").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_quick_builder_refuses_a_shard_out_of_range(corpus, tmp_path, capsys):
    assert run(["data", "build", str(tmp_path / "s"), "--images", str(corpus), "--shard", "3/2"]) == 1
    assert capsys.readouterr().err == "error: --shard 3/2: need N >= 1 and 0 <= I < N\n"
    assert not (tmp_path / "s").exists()


# --- a killed build's debris ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixphotos")
    for i in range(4):
        photo(60 + i, (48, 40)).save(folder / f"p{i}.png")
    path = folder.parent / "mix.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "size": 32, "min_size": 32, "chunk_size": 1, "val_fraction": 0.25,
                                    "components": [{"source": {"folder": str(folder)}, "degradations": ["blur"],
                                                    "count": 12}]}))
    return path


def _rows(ds: datasets.DatasetDict) -> dict[str, list[dict]]:
    """Every split's rows with images as raw bytes, for exact comparison."""
    out = {}
    for split, d in ds.items():
        for col, feat in d.features.items():
            if isinstance(feat, datasets.Image):
                d = d.cast_column(col, datasets.Image(decode=False))
        out[split] = d.to_list()
    return out


@pytest.fixture(scope="module")
def reference(mixture, tmp_path_factory) -> dict:
    return _rows(build_mixture(mixture, tmp_path_factory.mktemp("ref") / "ds", progress=False))


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _interrupted_parts(mixture, out: Path, monkeypatch, chunks: int) -> Path:
    """The parts folder a build killed after ``chunks`` chunks leaves."""
    from instructsd.data import write

    real, done = write.write_chunk, []

    def dies(plan, c, parts):
        if len(done) == chunks:
            raise KeyboardInterrupt
        done.append(c)
        real(plan, c, parts)

    monkeypatch.setattr(write, "write_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        build_mixture(mixture, out, progress=False)
    monkeypatch.setattr(write, "write_chunk", real)
    return out.with_name(out.name + ".parts")


def test_a_killed_builds_debris_never_blocks_a_rerun_or_overwrite(mixture, reference, tmp_path, monkeypatch, capsys):
    ref_dir = tmp_path / "ref"
    build_mixture(mixture, ref_dir, progress=False)

    # A kill while the plan was being removed: chunks without plan.json (refused as "not a parts folder"
    # before), one chunk half-deleted, and the joined copy half-written beside the output.
    out = tmp_path / "ds"
    parts = _interrupted_parts(mixture, out, monkeypatch, chunks=5)
    (parts / "plan.json").unlink()
    shutil.rmtree(parts / "chunks" / "000001" / "train", ignore_errors=True)
    (parts / "chunks" / "000002" / "skipped.jsonl").unlink()
    shutil.copytree(ref_dir / "train", tmp_path / ".ds.tmp-deadbeef" / "train")
    assert run(["data", "build", str(out), "--mixture", str(mixture), "--no-progress"]) == 0
    assert _rows(datasets.load_from_disk(str(out))) == reference
    assert _debris(tmp_path) == [] and not parts.exists()

    # --overwrite over the same debris, the plan kept but a chunk cut short (rmtree's order is arbitrary).
    parts = _interrupted_parts(mixture, tmp_path / "other", monkeypatch, chunks=4)
    parts.rename(out.with_name("ds.parts"))
    parts = out.with_name("ds.parts")
    shutil.rmtree(parts / "chunks" / "000003" / "validation", ignore_errors=True)
    shutil.rmtree(parts / "chunks" / "000003" / "train", ignore_errors=True)
    shutil.copytree(ref_dir, tmp_path / ".ds.tmp-0badf00d")
    assert run(["data", "build", str(out), "--mixture", str(mixture), "--overwrite", "--no-progress"]) == 0
    assert _rows(datasets.load_from_disk(str(out))) == reference
    assert _debris(tmp_path) == [] and not parts.exists()

    # A kill between moving the old dataset aside and renaming the new one in: the old one comes back.
    out.rename(tmp_path / ".ds.old-12345678")
    assert run(["data", "build", str(out), "--mixture", str(mixture), "--no-progress"]) == 1
    assert "exists; pass overwrite" in capsys.readouterr().err  # it is the user's dataset again
    assert _rows(datasets.load_from_disk(str(out))) == reference and _debris(tmp_path) == []


# --- kill -9 at seeded random moments ------------------------------------------------------------

FORK = multiprocessing.get_context("fork")  # the child starts with everything imported: a kill costs no start-up


def _kill_when(target, ready, rng: np.random.Generator, timeout: float = 300.0) -> bool:
    """Run ``target`` in a child process, SIGKILL it once ``ready()`` holds (plus a seeded 0-30 ms, so
    kills land inside writes too); True if it was killed, False if it finished first."""
    child = FORK.Process(target=target)
    child.start()
    deadline = time.monotonic() + timeout
    while child.is_alive() and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(float(rng.uniform(0, 0.03)))
    killed = child.is_alive()
    if killed:
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert killed or child.exitcode == 0, f"the child failed by itself (exit code {child.exitcode})"
    return killed


def _quiet(fn):
    def target():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        fn()
    return target


KILLS = 3


def test_a_mixture_build_killed_three_times_ends_with_the_uninterrupted_dataset(mixture, reference, tmp_path):
    rng = np.random.default_rng(17)
    out = tmp_path / "ds"
    chunks = out.with_name("ds.parts") / "chunks"
    build = _quiet(lambda: build_mixture(mixture, out, progress=False))
    # Two kills among the chunks, the third once the join has begun writing the dataset.
    points = sorted(rng.choice(np.arange(1, 10), size=KILLS - 1, replace=False))
    killed = 0
    for at in points:
        killed += _kill_when(build, lambda: chunks.is_dir() and sum(1 for c in chunks.iterdir()
                                                                     if not c.name.startswith(".")) >= at, rng)
    killed += _kill_when(build, lambda: any(p.name.startswith(".ds.tmp-") for p in tmp_path.iterdir()), rng)
    assert killed >= KILLS - 1  # the join is short: the last kill may come after it
    if not out.exists():
        build_mixture(mixture, out, progress=False)
    assert _rows(datasets.load_from_disk(str(out))) == reference
    assert _debris(tmp_path) == [] and not chunks.parent.exists()


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_training_run_killed_three_times_ends_with_the_uninterrupted_weights(tiny_model, pairs_24px, tmp_path):
    steps = 5
    # One thread in every child: a child forked after this process ran OpenMP work would hang in the
    # inherited thread pool, and all runs (reference, killed, resumed) must do the same arithmetic.
    threads = 1

    def cfg(out: Path, resume: str = "") -> TrainConfig:
        return load_config(TrainConfig, "tiny-cpu", [
            f"base_model={tiny_model}", f"dataset={pairs_24px}", f"output_dir={out}", "resolution=16",
            "train_batch_size=2", "lr_warmup_steps=1", "log_every=1", "report_to=none", f"max_train_steps={steps}",
            "checkpoint_every=1", "keep_last=2", f"resume={resume}"])

    def trainer(out: Path, resume: str = ""):
        def go():
            torch.set_num_threads(threads)
            train(cfg(out, resume), progress=False)
        return _quiet(go)

    reference = tmp_path / "full"
    assert not _kill_when(trainer(reference), lambda: False, np.random.default_rng(0))

    rng = np.random.default_rng(17)
    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    killed = 0
    for k, at in enumerate(sorted(rng.choice(np.arange(1, steps), size=KILLS, replace=False))):
        ready = lambda at=at: checkpoints.is_dir() and any(p.name == f"step-{at:07d}" for p in checkpoints.iterdir())
        killed += _kill_when(trainer(out, "latest" if k else ""), ready, rng)
    assert killed == KILLS
    assert not _kill_when(trainer(out, "latest"), lambda: False, rng)  # runs to the end

    assert _jsonl(out / "losses.jsonl") == _jsonl(reference / "losses.jsonl")
    full, resumed = _final_weights(reference), _final_weights(out)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
