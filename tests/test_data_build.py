"""build_dataset is an adapter over the mixture builder (issue 13): the older builder's seeds and
split, the mixture builder's skips, pixel limit, shards and card (issue 17 item 4)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import yaml
from conftest import photo
from PIL import Image

from instructsd.cli import run
from instructsd.data import build_dataset, get_task
from instructsd.data.degradations import DegradationSpec, degrade
from instructsd.data.plan import split_sources
from instructsd.data.tasks import TASKS
from instructsd.errors import InstructSDError

PHOTOS = [(f"p{i}", photo(i, (40 + 8 * i, 36))) for i in range(4)]


def _decoded(ds: datasets.Dataset) -> list[tuple]:
    return [(np.asarray(r["input_image"]).tobytes(), r["edit_prompt"], np.asarray(r["edited_image"]).tobytes(),
             r["task"], r["source"], r["group"], r["part"]) for r in ds]


def test_build_dataset_keeps_the_legacy_seed_scheme(tmp_path):
    """One row worked out by hand from the documented scheme (data/rows.py): the shipped base's
    data and check subset depend on it (tests/test_pretrain.py rebuilds the card to 1e-6)."""
    seed, size, crops = 3, 16, 3
    dd = build_dataset(PHOTOS, tmp_path / "ds", tasks=("lowlight", "denoise"), size=size, crops_per_image=crops,
                       val_fraction=0.25, seed=seed, progress=False)
    held = split_sources([n for n, _ in PHOTOS], 0.25, seed)
    assert set(dd["validation"]["source"]) == held and len(held) == 1  # round(4 * 0.25), by photo
    k, c = 2, 2  # photo p2, third crop, task denoise (index 0 of TASKS)
    name, image = PHOTOS[k]
    crop_rng = np.random.default_rng([seed, k, 0, 0, 1])
    for _ in range(c):  # crop c is the c-th box drawn from the photo's crop stream
        side = min(image.size) * crop_rng.uniform(0.5, 1.0)
        x, y = crop_rng.uniform(0, image.width - side), crop_rng.uniform(0, image.height - side)
    clean = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=(x, y, x + side, y + side)))
    rng = np.random.default_rng([seed, k, c, list(TASKS).index("denoise")])
    task = get_task("denoise")
    prompt = task.instructions[int(rng.integers(len(task.instructions)))]  # the instruction first
    sigma = rng.uniform(15.0, 35.0)
    noisy = np.clip(np.rint(clean + rng.normal(0.0, sigma, size=clean.shape)), 0, 255).astype(np.uint8)
    rows = dd["train" if name not in held else "validation"]
    # rows come photo by photo, crop by crop, task by task (the older builder's order)
    before = sum(1 for j in range(k) if PHOTOS[j][0] not in held) * crops * 2
    row = rows[before + c * 2 + 1]
    assert (row["source"], row["group"], row["part"], row["task"]) == (name, name, "", "denoise")
    assert row["edit_prompt"] == prompt
    assert np.array_equal(np.asarray(row["edited_image"]), clean)
    assert np.array_equal(np.asarray(row["input_image"]), noisy)


def test_task_registry_draws_from_the_degradation_catalogue():
    clean = np.asarray(photo(5, (24, 24)))
    narrower = {"denoise": DegradationSpec("gaussian_noise", {"sigma": (15.0, 35.0)}),
                "deblur": DegradationSpec("gaussian_blur", {"sigma": (1.0, 2.0)}),
                "lowlight": DegradationSpec("lowlight"), "derain": DegradationSpec("rain")}
    for name, spec in narrower.items():
        inp, target = get_task(name).apply(clean, np.random.default_rng(1))
        assert np.array_equal(inp, degrade(clean, [spec], np.random.default_rng(1))[0]), name
        assert np.array_equal(target, clean)
    assert all(sum(x is not None for x in (t.degradation, t.teacher, t.photo_op)) == 1 for t in TASKS.values())


def test_folder_builds_skip_bad_photos_and_shard_like_mixtures(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        photo(i, (40, 36)).save(folder / f"ok{i}.png")
    photo(7, (20, 20)).save(folder / "tiny.png")  # under --size: skipped, not a blurry upscale
    photo(8, (80, 60)).save(folder / "huge.png")  # over --max-pixels: refused before decoding
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["--images", str(folder), "--tasks", "denoise,cartoonize", "--size", "32", "--crops-per-image", "2",
            "--val-fraction", "0.25", "--max-pixels", "3000", "--no-progress"]
    assert run(["data", "build", str(tmp_path / "one"), *args]) == 0
    whole = datasets.load_from_disk(str(tmp_path / "one"))
    assert len(whole["train"]) + len(whole["validation"]) == 4 * 2 * 2
    skipped = [json.loads(line) for line in (tmp_path / "one" / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["source"]: s["reason"] for s in skipped}
    assert set(reasons) == {"tiny", "huge", "bomb"} and len(skipped) == 3 * 2 * 2  # every crop and task
    assert "smaller than min_size 32" in reasons["tiny"] and "over the 0.003 MP limit" in reasons["huge"]
    assert "bomb.png" in reasons["bomb"]
    # The same --shard semantics as mixture builds: the joined shards are the single build.
    for i in range(2):
        assert run(["data", "build", str(tmp_path / f"s{i}"), *args, "--shard", f"{i}/2"]) == 0
    assert run(["data", "join", str(tmp_path / "j"), str(tmp_path / "s0"), str(tmp_path / "s1"), "--no-progress"]) == 0
    joined = datasets.load_from_disk(str(tmp_path / "j"))
    assert all(_decoded(joined[s]) == _decoded(whole[s]) for s in whole)
    # mixture.yaml beside it is a mixture file that rebuilds the same rows.
    mix = yaml.safe_load((tmp_path / "one" / "mixture.yaml").read_text())
    assert (mix["seed_scheme"], mix["split"]) == ("legacy", "permutation")
    assert run(["data", "build", str(tmp_path / "again"), "--mixture", str(tmp_path / "one" / "mixture.yaml"),
                "--no-progress"]) == 0
    again = datasets.load_from_disk(str(tmp_path / "again"))
    assert all(_decoded(again[s]) == _decoded(whole[s]) for s in whole)


def test_in_memory_photos_fingerprint_their_pixels(tmp_path, monkeypatch):
    """Parts of a killed build are reused only for the same pixels, not just the same names."""
    from instructsd.data import write

    real, calls = write.write_chunk, []

    def dies(plan, c, parts):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "write_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(PHOTOS, tmp_path / "ds", tasks=("denoise",), size=16, crops_per_image=1, progress=False)
    monkeypatch.setattr(write, "write_chunk", lambda plan, c, p: (calls.append(c), real(plan, c, p)))
    other = [(name, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for name, im in PHOTOS]
    with pytest.raises(InstructSDError, match="different mixture or different source files"):
        build_dataset(other, tmp_path / "ds", tasks=("denoise",), size=16, crops_per_image=1, progress=False)
    dd = build_dataset(PHOTOS, tmp_path / "ds", tasks=("denoise",), size=16, crops_per_image=1, progress=False)
    assert len(dd["train"]) + len(dd["validation"]) == 4 and calls


def test_legacy_scheme_is_for_built_in_tasks_on_one_source():
    from instructsd.data.mixture import parse_mixture

    with pytest.raises(InstructSDError, match="seed_scheme legacy takes only the built-in tasks"):
        parse_mixture({"seed_scheme": "legacy", "components": [{"source": {"samples": True}, "degradations": ["blur"]}]})
    with pytest.raises(InstructSDError, match="split must be one of hash, permutation"):
        parse_mixture({"split": "random", "components": [{"source": {"samples": True}, "task": "denoise"}]})
