"""The Ray engine (issue 19): a dataset and a batch of edits identical to a local run's.

All tests share one local Ray instance of two CPUs (started once, shut down at the end) and
compare with the local engine: the dataset by its content hash and its card files byte for
byte, the edits pixel for pixel with their metadata and failures.jsonl.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.data import write
from instructsd.data.mixture import parse_mixture
from instructsd.data.plan import make_plan
from instructsd.data.write import build_mixture
from instructsd.errors import InstructSDError

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install instructsd[ray])")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every test here; the engines use it as they find it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def content_hash(ds: datasets.DatasetDict) -> str:
    """sha256 of every split's rows in order, images as their stored (PNG) bytes."""
    h = hashlib.sha256()
    for split in sorted(ds):
        d = ds[split]
        for col, feat in d.features.items():
            if isinstance(feat, datasets.Image):
                d = d.cast_column(col, datasets.Image(decode=False))
        h.update(split.encode())
        for row in d.to_list():
            for key, value in row.items():
                value = value["bytes"] if isinstance(value, dict) else str(value).encode()
                h.update(key.encode() + b"\0" + hashlib.sha256(value).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def mixture_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rayphotos")
    for i in range(5):
        photo(i, (48, 40)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")  # a skipped item: skipped.jsonl must match too
    mix = {"seed": 3, "size": 32, "min_size": 32, "chunk_size": 4, "val_fraction": 0.25, "components": [
        {"source": {"folder": str(folder)}, "degradations": ["blur", "gaussian_noise"], "count": 9},
        {"task": "cartoonize", "source": {"folder": str(folder)}, "teacher": "cartoonizer", "count": 6},
        {"task": "exposure", "source": {"folder": str(folder)}, "count": 5},
    ]}
    path = folder.parent / "mix.yaml"
    path.write_text(yaml.safe_dump(mix))
    return path


@pytest.fixture(scope="module")
def local_build(mixture_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "ds"
    build_mixture(mixture_file, out, progress=False)
    return out


CARD_FILES = ("README.md", "samples.png", "skipped.jsonl", "mixture.yaml")


@needs_ray
def test_ray_build_is_identical_to_local(ray_local, mixture_file, local_build, tmp_path):
    out = tmp_path / "ds"
    assert run(["data", "build", str(out), "--mixture", str(mixture_file), "--engine", "ray", "--no-progress"]) == 0
    assert content_hash(datasets.load_from_disk(str(out))) == content_hash(datasets.load_from_disk(str(local_build)))
    for name in CARD_FILES:
        assert (out / name).read_bytes() == (local_build / name).read_bytes(), name
    assert "broken" in (out / "skipped.jsonl").read_text()
    assert not out.with_name("ds.parts").exists()


@needs_ray
def test_interrupted_ray_build_resumes_without_redoing_chunks(ray_local, mixture_file, local_build, tmp_path,
                                                              monkeypatch):
    real, given = write.write_chunks_on_ray, []

    def killed_after_two(write_chunk, plan, chunks, parts, **kw):
        for n, c in enumerate(real(write_chunk, plan, chunks, parts, **kw)):
            if n == 2:
                raise KeyboardInterrupt  # as if the driver were killed, with tasks still running
            yield c

    def recording(write_chunk, plan, chunks, parts, **kw):
        given.append(list(chunks))
        yield from real(write_chunk, plan, chunks, parts, **kw)

    out = tmp_path / "ds"
    monkeypatch.setattr(write, "write_chunks_on_ray", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_mixture(mixture_file, out, engine="ray", progress=False)
    assert not out.exists() and (tmp_path / "ds.parts" / "plan.json").is_file()
    monkeypatch.setattr(write, "write_chunks_on_ray", recording)
    ds = build_mixture(mixture_file, out, engine="ray", progress=False)
    n_chunks = make_plan(parse_mixture(yaml.safe_load(mixture_file.read_text()), where=str(mixture_file))).n_chunks
    (todo,) = given
    assert 2 <= n_chunks - len(todo) < n_chunks  # the finished chunks were kept, the rest made now
    assert content_hash(ds) == content_hash(datasets.load_from_disk(str(local_build)))


@needs_ray
def test_ray_edit_batch_is_identical_to_local(ray_local, tiny_model, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        photo(i, (40, 32)).save(images / f"p{i}.png")
    (images / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = ["edit", "--model", tiny_model, "--image", str(images), "--instruction", "Denoise the image.",
            "--seed", "1", "--seed", "2", "--steps", "2"]
    assert run([*args, "--out", str(tmp_path / "local")]) == 0
    assert run([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--actors", "2"]) == 0
    local, remote = tmp_path / "local", tmp_path / "ray"
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in remote.iterdir())
    assert len([n for n in names if n.endswith(".png")]) == 6
    for name in names:
        if name.endswith(".png"):
            a, b = Image.open(local / name), Image.open(remote / name)
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
            assert a.text == b.text, name
        else:  # sidecar JSON, failures.jsonl, the output-folder marker
            assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    assert "garbage.jpg" in (remote / "failures.jsonl").read_text()


def test_without_ray_the_engine_says_how_to_install_it(mixture_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    assert run(["data", "build", str(tmp_path / "ds"), "--mixture", str(mixture_file), "--engine", "ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install instructsd[ray]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ds.parts").exists()  # refused before any work


def test_engine_options_are_checked_before_any_work(mixture_file, tmp_path):
    with pytest.raises(InstructSDError, match="unknown engine 'spark'"):
        build_mixture(mixture_file, tmp_path / "ds", engine="spark", progress=False)
    with pytest.raises(InstructSDError, match="add --engine ray"):
        build_mixture(mixture_file, tmp_path / "ds", address="auto", progress=False)
    assert not (tmp_path / "ds.parts").exists()


@needs_ray
def test_ray_edit_is_for_batches(tiny_model, tmp_path):
    photo(0, (40, 32)).save(tmp_path / "p.png")
    args = ["edit", "--model", tiny_model, "--image", str(tmp_path / "p.png"), "--instruction", "Denoise the image.",
            "--engine", "ray"]
    assert run([*args, "--out", str(tmp_path / "one.png")]) == 1
    assert run([*args, "--out", str(tmp_path / "grid"), "--sweep", "steps=1,2"]) == 1
    assert not (tmp_path / "one.png").exists() and not (tmp_path / "grid").exists()

