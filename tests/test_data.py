"""Tests for instructsd.data: image loading, edit tasks, dataset building, sample photos."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest
from PIL import Image

from instructsd.data import (
    COLUMNS,
    parse_mixture,
    TASKS,
    build_dataset,
    find_images,
    get_task,
    load_image,
    load_instruction_dataset,
    sample_images,
)
from instructsd.data import write as write_module
from instructsd.data.photo_ops import apply_edits, parse_edit_params
from instructsd.errors import InstructSDError


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A small synthetic 'photo': smooth colour gradient, a few flat discs, mild texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([x, y, 1 - x * y], axis=-1) * 180 + 40
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(h, w) / 4)
        img[(y * max(h, w) - cy) ** 2 + (x * max(h, w) - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- load_image ----------------------------------------------------------------------------


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(photo(32, 32)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        (b"", r"empty \(0 bytes\)"),
        (b"this is not an image at all", "not a recognised image"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_load_image_bad_files_name_the_file(tmp_path, content, expected):
    path = tmp_path / "bad_photo.png"
    if content == "truncated":
        path.write_bytes(_png_bytes()[:200])  # valid header, cut-off pixel data
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InstructSDError, match=expected) as info:
        load_image(path)
    assert "bad_photo.png" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_image_directory_is_an_error(tmp_path):
    with pytest.raises(InstructSDError, match="directory"):
        load_image(tmp_path)


def test_load_image_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red...
    rgba[:2, :, 3] = 255  # ...opaque in the top half, transparent below
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (4, 4)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((0, 3)) == (255, 255, 255)


def test_load_image_palette_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 0, 2, 4))  # left half green, right half index 0 (transparent)
    p.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 255, 0)
    assert out.getpixel((3, 0)) == (255, 255, 255)


def test_load_image_cmyk_and_grayscale(tmp_path):
    Image.new("CMYK", (5, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    assert out.mode == "RGB" and out.size == (5, 3)
    r, g, b = out.getpixel((2, 1))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    Image.new("L", (3, 2), 77).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)


def test_load_image_16bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "16.png")
    out = np.asarray(load_image(tmp_path / "16.png"))
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_load_image_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.png", exif=exif)
    out = load_image(tmp_path / "r.png")
    assert out.size == (20, 40)
    assert out.getpixel((10, 5)) == (255, 0, 0)  # the left half is now on top
    assert out.getpixel((10, 35)) == (0, 0, 255)


def test_load_image_animated_takes_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    out = load_image(tmp_path / "anim.gif")
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 0, 0)


# --- find_images ---------------------------------------------------------------------------


def test_find_images_recursive_sorted_skips_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    for rel in ("b.JPG", "a.png", "sub/c.webp", "._a.png", "notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b.JPG", "sub/c.webp"]


def test_find_images_missing_or_empty_folder(tmp_path):
    with pytest.raises(InstructSDError, match="does not exist") as info:
        find_images(tmp_path / "nope")
    assert "nope" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstructSDError, match="no images found") as info:
        find_images(tmp_path / "empty")
    assert "empty" in str(info.value)


# --- tasks ---------------------------------------------------------------------------------


def _highfreq_energy(a: np.ndarray) -> float:
    return float(cv2.Laplacian(a.astype(np.float64), cv2.CV_64F).var())


def _n_colors(a: np.ndarray) -> int:
    return len(np.unique(a.reshape(-1, 3), axis=0))


CLEAN = photo(48, 48)


def test_denoise_adds_noise_and_keeps_clean_target():
    inp, target = get_task("denoise").apply(CLEAN, np.random.default_rng(0))
    assert np.array_equal(target, CLEAN)
    assert np.std(inp.astype(float) - CLEAN) > 10  # sigma >= 15, a little less after clipping
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert np.std(get_task("denoise").apply(flat, np.random.default_rng(0))[0]) > 10


def test_lowlight_darkens():
    inp, target = get_task("lowlight").apply(CLEAN, np.random.default_rng(0))
    assert np.array_equal(target, CLEAN)
    assert inp.mean() < 0.6 * CLEAN.mean()


def test_deblur_removes_high_frequencies():
    inp, target = get_task("deblur").apply(CLEAN, np.random.default_rng(0))
    assert np.array_equal(target, CLEAN)
    assert _highfreq_energy(inp) < 0.5 * _highfreq_energy(CLEAN)


@pytest.mark.parametrize("size", [32, 64, 512])
def test_cartoonize_reduces_colors_at_any_size(size):
    clean = np.asarray(Image.fromarray(photo(48, 48, seed=3)).resize((size, size)))
    inp, target = get_task("cartoonize").apply(clean, np.random.default_rng(0))
    assert np.array_equal(inp, clean)
    assert target.shape == clean.shape and target.dtype == np.uint8
    assert _n_colors(target) <= 9 < _n_colors(clean)  # 8-colour palette + black lines
    assert (target == 0).all(axis=-1).mean() < 0.5  # lines, not a black image


@pytest.mark.parametrize("name", list(TASKS))
def test_tasks_are_deterministic_given_rng(name):
    task = get_task(name)
    a = task.apply(CLEAN, np.random.default_rng(7))
    b = task.apply(CLEAN, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.dtype == np.uint8 and x.shape == CLEAN.shape for x in a)
    if task.photo_op is not None:  # the input is the photo; the target is its drawn edit applied
        inp, target, params = task.make(CLEAN, np.random.default_rng(7))
        assert np.array_equal(inp, CLEAN) and np.array_equal(target, apply_edits(CLEAN, parse_edit_params(params)))
    elif name != "cartoonize":  # the teacher ignores rng by design
        c = task.apply(CLEAN, np.random.default_rng(8))
        assert not np.array_equal(a[0], c[0])


def test_task_registry():
    for task in TASKS.values():
        if task.photo_op is not None:  # its instruction states the row's amount: canonical_row_instruction
            assert task.instructions and len(set(task.instructions)) == len(task.instructions)
            continue
        assert len(task.instructions) >= 5
        assert len(set(task.instructions)) == len(task.instructions)
        assert task.canonical == task.instructions[0]
    with pytest.raises(InstructSDError, match="denoise.*cartoonize"):
        get_task("colorize")
    with pytest.raises(InstructSDError, match="uint8"):
        get_task("denoise").apply(CLEAN.astype(np.float32), np.random.default_rng(0))


# --- build_dataset -------------------------------------------------------------------------

SOURCES = [
    ("alpha", Image.fromarray(photo(60, 80, seed=1))),
    ("beta", Image.fromarray(photo(70, 50, seed=2))),
    ("gamma", Image.fromarray(photo(40, 40, seed=3)).convert("L")),  # non-RGB on purpose
]
KW = dict(size=16, crops_per_image=2, seed=0, progress=False)


def _rows(ds: datasets.Dataset) -> list[tuple]:
    return [
        (np.asarray(r["input_image"]).tobytes(), r["edit_prompt"],
         np.asarray(r["edited_image"]).tobytes(), r["task"], r["source"])
        for r in ds
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, datasets.DatasetDict]:
    out = tmp_path_factory.mktemp("build") / "ds"
    return out, build_dataset(SOURCES, out, **KW)


def test_build_dataset_structure(built):
    out, dd = built
    assert set(dd) == {"train", "validation"}
    for split in dd.values():
        assert tuple(split.column_names) == COLUMNS
        assert isinstance(split.features["input_image"], datasets.Image)
        assert isinstance(split.features["edited_image"], datasets.Image)
    assert len(dd["train"]) + len(dd["validation"]) == 3 * 2 * 3
    train_src, val_src = set(dd["train"]["source"]), set(dd["validation"]["source"])
    assert len(val_src) == 1 and len(train_src) == 2 and not train_src & val_src
    row = dd["validation"][0]
    assert row["input_image"].size == (16, 16) and row["input_image"].mode == "RGB"
    assert row["edit_prompt"] in get_task(row["task"]).instructions
    for split in dd.values():
        assert sorted(set(split["task"])) == ["cartoonize", "denoise", "lowlight"]
    assert (out / "README.md").read_text().startswith("---\n")  # the hub metadata block, then the card
    assert Image.open(out / "samples.png").size[0] > 0
    assert load_instruction_dataset(out)["train"].num_rows == dd["train"].num_rows


def test_build_dataset_is_reproducible(built, tmp_path):
    _, dd = built
    again = build_dataset(SOURCES, tmp_path / "again", **KW)
    for split in dd:
        assert _rows(again[split]) == _rows(dd[split])
    other = build_dataset(SOURCES, tmp_path / "other", **{**KW, "seed": 1})
    assert _rows(other["train"]) + _rows(other["validation"]) != \
        _rows(dd["train"]) + _rows(dd["validation"])


def test_build_dataset_samples_do_not_depend_on_other_tasks(built, tmp_path):
    _, dd = built
    only = build_dataset(SOURCES, tmp_path / "only", **{**KW, "tasks": ("denoise",)})
    for split in dd:
        full = [r for r in _rows(dd[split]) if r[3] == "denoise"]
        assert _rows(only[split]) == full


def test_build_dataset_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    build_dataset(SOURCES[:2], out, **KW)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InstructSDError, match="exists.*overwrite=True"):
        build_dataset(SOURCES, out, **KW)
    assert sorted(p.name for p in out.iterdir()) == before
    dd = build_dataset(SOURCES, out, **KW, overwrite=True)
    assert set(dd["train"]["source"]) | set(dd["validation"]["source"]) == {"alpha", "beta", "gamma"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .old / .tmp left


def test_build_dataset_overwrite_never_deletes_a_non_dataset_folder(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(InstructSDError, match="not a dataset"):
        build_dataset(SOURCES, precious, **KW, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_build_dataset_failure_leaves_no_partial_folder(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails after save_to_disk has written the splits, i.e. mid-save: no dataset folder, only the
    # finished chunks (one builder since issue 13: they make a rerun resume instead of start over).
    monkeypatch.setattr(write_module, "samples_grid", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset(SOURCES, tmp_path / "ds", **KW)
    assert [p.name for p in tmp_path.iterdir()] == ["ds.parts"]
    monkeypatch.undo()
    resumed = build_dataset(SOURCES, tmp_path / "ds", **KW)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert set(resumed["train"]["source"]) | set(resumed["validation"]["source"]) == {"alpha", "beta", "gamma"}

    # A failed overwrite leaves the previous dataset whole.
    build_dataset(SOURCES[:2], tmp_path / "two", **KW)
    monkeypatch.setattr(write_module, "samples_grid", boom)
    with pytest.raises(RuntimeError):
        build_dataset(SOURCES, tmp_path / "two", **KW, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "two", "two.parts"]  # no .tmp / .old folders
    assert set(load_instruction_dataset(tmp_path / "two")["train"]["source"]) <= {"alpha", "beta"}


def test_build_dataset_bad_arguments(tmp_path):
    with pytest.raises(InstructSDError, match="unknown task 'colorize'"):
        build_dataset(SOURCES, tmp_path / "x", **KW, tasks=("colorize",))
    with pytest.raises(InstructSDError, match="unique.*alpha"):
        build_dataset([SOURCES[0], SOURCES[0]], tmp_path / "x", **KW)
    assert not (tmp_path / "x").exists()


def test_load_instruction_dataset_explains_what_is_wrong(tmp_path):
    with pytest.raises(InstructSDError, match="no dataset at .*missing.*data build"):
        load_instruction_dataset(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(InstructSDError, match="junk"):
        load_instruction_dataset(tmp_path / "junk")
    one = {"input_image": [Image.new("RGB", (2, 2))], "edit_prompt": ["x"],
           "edited_image": [Image.new("RGB", (2, 2))], "source": ["s"]}
    schema = write_module.features(parse_mixture({"components": [{"task": "denoise", "source": {"samples": True}}]}))
    features = datasets.Features({k: v for k, v in schema.items() if k in one})  # no task column
    ds = datasets.Dataset.from_dict(one, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(InstructSDError, match="no 'validation' split"):
        load_instruction_dataset(tmp_path / "nosplit")
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "nocol"))
    with pytest.raises(InstructSDError, match="nocol.*lacks column.*task"):
        load_instruction_dataset(tmp_path / "nocol")


# --- sample photos -------------------------------------------------------------------------


def test_sample_images_are_bundled_rgb_photos(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_images must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    samples = sample_images()
    names = [name for name, _ in samples]
    assert 15 <= len(samples) <= 20  # scikit-image's 15 and the extended set's colour photos
    assert names == sorted(names) and len(set(names)) == len(names)
    assert "astronaut" in names and "horse" not in names
    assert all(im.mode == "RGB" and min(im.size) >= 128 for _, im in samples)
