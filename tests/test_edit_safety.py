"""`instructsd edit` under abuse (issue 17): bounded memory for any input, one bad image never
stops a batch, nothing overwritten that the user did not name, and inputs too small refused."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.edit.inputs import read_image
from instructsd.errors import InstructSDError
from instructsd.files import OUTPUT_MARKER

SRC = Path(__file__).resolve().parents[1] / "src"


def huge_png_header(path, width=100_000, height=100_000):
    """A tiny file whose header declares a gigantic image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def photo_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A camera-sized JPEG: gradients plus sensor-like noise (no two blocks alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    img += rng.normal(0, 20, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def edit_argv(model, image, out, *extra):
    return ["edit", "--model", str(model), "--image", str(image), "--instruction", "Cartoonize the image.",
            "--out", str(out), "--steps", "1", *extra]


# --- bounded memory; one bad image never stops a batch --------------------------------------


def test_a_12_mp_photo_edits_in_bounded_memory_beside_broken_files(tmp_path):
    """Issue 17, defect 2: a 12 MP JPEG took 23 GB with the tiny model and got the batch killed.
    Run in a fresh interpreter that reports its own peak RSS; the address-space cap (8 GB) makes
    the old behaviour fail fast instead of taking the machine with it."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo_jpeg(folder / "big.jpg", 4000, 3000)
    photo(0, (48, 40)).save(folder / "good.png")
    huge_png_header(folder / "bomb.png")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (folder / "truncated.jpg").write_bytes((folder / "big.jpg").read_bytes()[:5000])
    out = tmp_path / "out"
    script = (
        "import json, resource, sys; from instructsd.cli import run; "
        "code = run(json.loads(sys.argv[1])); "
        "print(json.dumps({'code': code, 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
    )
    cap = 8 * 1024**3

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(edit_argv("instructsd/tiny-base", folder, out))],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gb = report["maxrss_kb"] / 1024**2
    print(f"12 MP edit: peak RSS {peak_gb:.2f} GB")
    assert report["code"] == 0, proc.stderr[-2000:]
    assert peak_gb < 6.0
    # The default carry-back (--highres residual) gives the edit back at full size.
    assert Image.open(out / "big_i0_s0.png").size == (4000, 3000)
    assert Image.open(out / "good_i0_s0.png").size == (48, 40)
    failures = {Path(json.loads(line)["image"]).name: json.loads(line)["error"]
                for line in (out / "failures.jsonl").read_text().splitlines()}
    assert set(failures) == {"bomb.png", "dot.png", "empty.png", "garbage.jpg", "truncated.jpg"}
    assert "too large" in failures["bomb.png"] and "too small" in failures["dot.png"]
    assert "5 input(s) failed" in proc.stderr


def test_a_run_where_every_input_fails_exits_non_zero(tmp_path, tiny_model, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    huge_png_header(folder / "bomb.png")
    out = tmp_path / "out"
    assert run(edit_argv(tiny_model, folder, out)) == 1
    assert "every input failed (2)" in capsys.readouterr().err
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2


def test_without_the_carry_back_the_model_edits_at_its_own_size(tmp_path, tiny_model):
    """--highres off: the output size defaults to the model's native side (bounded), not the input's;
    the JPEG is decoded at reduced scale (draft) on the way."""
    source = photo_jpeg(tmp_path / "wide.jpg", 1600, 1200)
    reduced = read_image(source, max_side=100)
    assert reduced.size == (200, 150)  # 1/8 DCT scale: the smallest that still covers 100 px
    assert read_image(source).size == (1600, 1200)
    out = tmp_path / "off.png"
    assert run(edit_argv(tiny_model, source, out, "--highres", "off")) == 0
    assert Image.open(out).size == (32, 24)  # the test model's native side is 32 px
    assert run(edit_argv(tiny_model, source, tmp_path / "big.png", "--highres", "off", "--max-side", "64")) == 0
    assert Image.open(tmp_path / "big.png").size == (64, 48)


# --- small things the CLI refuses ------------------------------------------------------------


def test_empty_instruction_and_tiny_image_are_refused(tmp_path, tiny_model, capsys):
    photo(0, (40, 32)).save(tmp_path / "in.png")
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "in.png"), "--instruction", "  ",
                "--out", str(tmp_path / "o.png")]) == 1
    assert "--instruction is empty" in capsys.readouterr().err
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    assert run(edit_argv(tiny_model, tmp_path / "dot.png", tmp_path / "dot-out.png")) == 1
    assert "too small to edit: 1×1" in capsys.readouterr().err
    assert not (tmp_path / "dot-out.png").exists()
    with pytest.raises(InstructSDError, match="too small"):
        read_image(tmp_path / "dot.png")


# --- nothing overwritten that the user did not name ----------------------------------------


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(1, (40, 32)).save(folder / "cat.png")
    (folder / "failures.jsonl").write_text("the user's own notes\n")
    return folder


def test_out_may_not_be_an_input_or_a_folder_holding_inputs(inputs, tmp_path, tiny_model, capsys):
    cat = inputs / "cat.png"
    before = cat.read_bytes()
    assert run(edit_argv(tiny_model, cat, cat)) == 1
    assert "is one of the input images" in capsys.readouterr().err
    for out in (inputs, tmp_path):  # the input folder itself, and a folder above it
        assert run(edit_argv(tiny_model, inputs, out, "--overwrite")) == 1
        assert "holds input images" in capsys.readouterr().err
    assert cat.read_bytes() == before
    assert (inputs / "failures.jsonl").read_text() == "the user's own notes\n"
    assert sorted(p.name for p in inputs.iterdir()) == ["cat.png", "failures.jsonl"]


def test_out_with_another_image_extension_is_refused_not_made_a_folder(inputs, tmp_path, tiny_model, capsys):
    assert run(edit_argv(tiny_model, inputs / "cat.png", tmp_path / "o.jpg")) == 1
    assert "name the file o.png" in capsys.readouterr().err
    assert not (tmp_path / "o.jpg").exists()


def test_overwrite_replaces_only_what_instructsd_wrote(inputs, tmp_path, tiny_model, capsys):
    # A folder of someone else's files: never written into, --overwrite or not.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "cat_i0_s0.png").write_bytes(b"their file")
    for extra in ((), ("--overwrite",)):
        assert run(edit_argv(tiny_model, inputs, theirs, *extra)) == 1
        assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in theirs.iterdir()) == ["cat_i0_s0.png"]

    # Our own folder: marked; a second run replaces its files only with --overwrite.
    ours = tmp_path / "ours"
    assert run(edit_argv(tiny_model, inputs, ours)) == 0
    assert (ours / OUTPUT_MARKER).is_file()
    first = (ours / "cat_i0_s0.png").stat().st_mtime_ns
    assert run(edit_argv(tiny_model, inputs, ours)) == 1
    err = capsys.readouterr().err
    assert "cat_i0_s0.png" in err and "pass --overwrite" in err
    assert (ours / "cat_i0_s0.png").stat().st_mtime_ns == first
    assert run(edit_argv(tiny_model, inputs, ours, "--overwrite")) == 0
    assert (ours / "cat_i0_s0.png").stat().st_mtime_ns != first
    # A new seed adds files beside the old ones without --overwrite.
    assert run(edit_argv(tiny_model, inputs, ours, "--seed", "7")) == 0
    assert (ours / "cat_i0_s7.png").exists() and (ours / "cat_i0_s0.png").exists()

    # A single file: replaced only with --overwrite, and only when it is an instructsd edit.
    single = tmp_path / "one.png"
    assert run(edit_argv(tiny_model, inputs / "cat.png", single)) == 0
    assert run(edit_argv(tiny_model, inputs / "cat.png", single)) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert run(edit_argv(tiny_model, inputs / "cat.png", single, "--overwrite")) == 0
    holiday = tmp_path / "holiday.png"
    photo(2).save(holiday)
    before = holiday.read_bytes()
    assert run(edit_argv(tiny_model, inputs / "cat.png", holiday, "--overwrite")) == 1
    assert "was not written by instructsd edit" in capsys.readouterr().err
    assert holiday.read_bytes() == before
