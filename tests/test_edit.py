"""Editing for real use: batches over folders with bad files, sizes, high-res mode, sweeps."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.edit.editor import EditSettings, configure_pipeline, edit_images, fit_size, load_pipeline
from instructsd.edit.highres import guided_upsample, residual_upsample
from instructsd.edit.inputs import check_pixels, collect_inputs
from instructsd.errors import InstructSDError


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / max(np.mean((x - y) ** 2), 1e-10)))


def huge_png_header(path, width=100_000, height=100_000):
    """A tiny file whose header declares a gigantic image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def pipe(ip2p_hub_model):
    return load_pipeline(ip2p_hub_model, device="cpu")


@pytest.fixture
def messy_folder(tmp_path):
    """Good images in every awkward format, plus files no loader can read."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    small = (40, 32)
    photo(0, (44, 30)).save(folder / "plain.png")
    photo(1, small).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(photo(2, small).convert("L"), np.uint16) * 257)).save(folder / "sub" / "deep16.png")
    pal = photo(3, small).convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_alpha.png")
    frames = [photo(i, small) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    photo(4, (40, 24)).save(folder / "rotated.jpg", exif=exif)
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg")
    huge_png_header(folder / "bomb.png")
    return folder


def test_batch_over_a_messy_folder_writes_every_good_edit_and_records_failures(messy_folder, ip2p_hub_model, tmp_path, capsys):
    tiny_model = ip2p_hub_model  # a hub-layout checkpoint (issue 11)
    out = tmp_path / "out"
    code = run(["edit", "--model", tiny_model, "--image", str(messy_folder), "--instruction", "Denoise the image.",
                "--instruction", "Cartoonize the image.", "--seed", "1", "--steps", "2",
                "--batch-size", "2", "--scheduler", "ddim", "--negative-prompt", "blurry", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "3 input(s) failed" in err
    failures = {json.loads(line)["image"].split("/")[-1]: json.loads(line)["error"]
                for line in (out / "failures.jsonl").read_text().splitlines()}
    assert set(failures) == {"empty.png", "garbage.jpg", "bomb.png"}
    assert "0 bytes" in failures["empty.png"] and "too large" in failures["bomb.png"]

    good = ["anim", "cmyk", "palette_alpha", "plain", "rotated", "sub__deep16"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"{g}_i{k}_s{s}.png" for g in good for k in (0, 1) for s in (1,))
    assert Image.open(out / "rotated_i0_s1.png").size == (24, 40)  # EXIF rotation applied
    assert Image.open(out / "plain_i0_s1.png").size == (40, 24)  # multiples of 8
    edited = Image.open(out / "cmyk_i1_s1.png")
    assert edited.mode == "RGB"
    assert edited.text["instructsd:instruction"] == "Cartoonize the image."
    meta = json.loads((out / "cmyk_i1_s1.json").read_text())
    assert meta["seed"] == 1 and meta["model"] == tiny_model and meta["scheduler"] == "ddim"
    assert meta["negative_prompt"] == "blurry" and meta["image"].endswith("cmyk.jpg")


def test_glob_and_single_file_forms(tmp_path, tiny_model, capsys):
    for i in range(2):
        photo(i, (40, 32)).save(tmp_path / f"p{i}.png")
    photo(9, (40, 32)).save(tmp_path / "other.jpg")
    assert [p.name for p in collect_inputs([str(tmp_path / "p*.png")])] == ["p0.png", "p1.png"]
    with pytest.raises(InstructSDError, match="no image files match"):
        collect_inputs([str(tmp_path / "q*.png")])
    # A .png --out with several outputs is refused before any model loads.
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "p*.png"), "--instruction", "x",
                "--out", str(tmp_path / "o.png")]) == 1
    assert "pass a folder" in capsys.readouterr().err
    out = tmp_path / "one.png"
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "p0.png"), "--instruction", "x",
                "--out", str(out), "--steps", "2", "--max-side", "24"]) == 0
    assert Image.open(out).size == (24, 16)  # 40×32 → 24×19.2 → multiples of 8, aspect kept
    # Several seeds of one image: one file per seed, each seed reproducible.
    folder = tmp_path / "seeds"
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "p0.png"), "--instruction", "x",
                "--out", str(folder), "--steps", "2", "--seed", "5", "--seed", "6", "--batch-size", "2"]) == 0
    a, b = (np.asarray(Image.open(folder / f"p0_i0_s{s}.png")) for s in (5, 6))
    assert not np.array_equal(a, b)
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "p0.png"), "--instruction", "x",
                "--out", str(tmp_path / "again.png"), "--steps", "2", "--seed", "6"]) == 0
    again = np.asarray(Image.open(tmp_path / "again.png"), np.int16)
    assert np.abs(again - b.astype(np.int16)).max() <= 2  # batched vs alone: float rounding only


def test_output_names_never_collide():
    from pathlib import Path

    from instructsd.edit.batch import output_stems

    stems = output_stems([Path("a/x.png"), Path("b/x.png"), Path("b/x.jpg"), Path("r/s/y z.png")], root=Path("r"))
    assert list(stems.values()) == ["x", "x-2", "x-3", "s__y_z"]


def test_fit_size_keeps_aspect_and_multiples_of_8():
    im = Image.new("RGB", (1000, 750))
    assert fit_size(im).size == (1000, 744)
    assert fit_size(im, max_side=512).size == (512, 384)
    assert fit_size(Image.new("RGB", (100, 60)), max_side=512).size == (96, 56)  # never upscaled
    assert fit_size(Image.new("RGB", (5, 3))).size == (8, 8)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    huge_png_header(tmp_path / "bomb.png")  # Pillow itself refuses this one on open
    with pytest.raises(InstructSDError, match="bomb.png.*too large"):
        check_pixels(tmp_path / "bomb.png")
    huge_png_header(tmp_path / "big.png", 10_000, 8_000)  # 80 MP: under Pillow's limit, over ours
    with pytest.raises(InstructSDError, match="big.png.*80.0 MP, over the 50 MP limit"):
        check_pixels(tmp_path / "big.png")
    photo(0).save(tmp_path / "ok.png")
    check_pixels(tmp_path / "ok.png")
    with pytest.raises(InstructSDError, match="--max-pixels"):
        check_pixels(tmp_path / "ok.png", max_pixels=100)


def test_detail_transfer_carries_a_tone_change_and_keeps_detail():
    full = photo(5, (256, 192))
    rng = np.random.default_rng(0)
    detail = np.clip(np.asarray(full, np.float64) + rng.normal(0, 12, (192, 256, 3)), 0, 255).astype(np.uint8)
    full = Image.fromarray(detail)  # fine texture the low-res edit cannot see
    truth = Image.fromarray(np.clip(np.asarray(full, np.float64) * 0.6 + 40, 0, 255).astype(np.uint8))
    low_in = full.resize((64, 48), Image.LANCZOS)
    low_edit = truth.resize((64, 48), Image.LANCZOS)  # a perfect low-resolution edit
    upscaled = low_edit.resize(full.size, Image.BICUBIC)
    for transfer in (guided_upsample, residual_upsample):
        restored = transfer(full, low_in, low_edit)
        assert restored.size == full.size
        assert psnr(restored, truth) > psnr(upscaled, truth) + 3
        # An edit that changes nothing gives the full-resolution input back.
        assert psnr(transfer(full, low_in, low_in), full) > 38


def test_highres_mode_edits_at_native_size_and_returns_full_size(pipe):
    big = photo(6, (96, 72))
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert native < 96
    plain, residual, guided = (
        edit_images(pipe, [big], ["x"], EditSettings(num_inference_steps=2, highres=mode), seeds=[0])[0]
        for mode in ("off", "residual", "guided")
    )
    assert plain.size == residual.size == guided.size == (96, 72)
    # What the residual mode adds to the input is the low-res edit's change, upsampled.
    low_in = fit_size(big, max_side=native)
    (low_edit,) = edit_images(pipe, [low_in], ["x"], EditSettings(num_inference_steps=2), seeds=[0])
    expected = residual_upsample(big, low_in, low_edit)
    assert np.abs(np.asarray(residual, np.int16) - np.asarray(expected, np.int16)).max() <= 2
    with pytest.raises(InstructSDError, match="highres"):
        EditSettings(highres="tiled")


def test_sweep_writes_a_labelled_grid(tmp_path, tiny_model):
    photo(7, (40, 32)).save(tmp_path / "in.png")
    out = tmp_path / "sweep"
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "in.png"), "--instruction", "x",
                "--out", str(out), "--steps", "2", "--sweep", "guidance=3,7",
                "--sweep", "image_guidance=1.0,1.5,2.0"]) == 0
    grid = Image.open(out / "in_sweep.png")
    assert grid.size == (3 * 40, 2 * (32 + 14))  # rows: first sweep; columns: second
    meta = json.loads((out / "in_sweep.json").read_text())
    assert meta["sweep"][1] == {"setting": "image_guidance_scale", "values": [1.0, 1.5, 2.0]}
    assert run(["edit", "--model", tiny_model, "--image", str(tmp_path / "in.png"), "--instruction", "x",
                "--out", str(out), "--sweep", "strength=1"]) == 1


def test_memory_options(pipe):
    configure_pipeline(pipe, attention_slicing=True, vae_tiling=True)
    out, = edit_images(pipe, [photo(8, (40, 32))], ["x"], EditSettings(num_inference_steps=2))
    assert out.size == (40, 32)
    pipe.disable_attention_slicing()
    pipe.vae.disable_tiling()
    if not __import__("torch").cuda.is_available():
        with pytest.raises(InstructSDError, match="CUDA"):
            configure_pipeline(pipe, cpu_offload=True)


def test_auto_sampler_follows_the_model(tiny_model, tmp_path):
    """'auto' keeps the post's Euler ancestral for ordinary models, uses the sampler a model folder
    ships with, and never hands a clean-latent predictor to Euler ancestral (which cannot sample it)."""
    import shutil

    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    from instructsd.recipes.pretrain_tiny import ship_scheduler

    image, instruction = photo(1, (32, 32)), "Denoise the image."
    plain = load_pipeline(tiny_model, device="cpu")
    edit_images(plain, [image], [instruction], EditSettings(num_inference_steps=2))
    assert isinstance(plain.scheduler, EulerAncestralDiscreteScheduler)

    sample_model = tmp_path / "sample-model"
    shutil.copytree(tiny_model, sample_model)
    config = json.loads((sample_model / "scheduler" / "scheduler_config.json").read_text())
    (sample_model / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "sample"}))
    pipe = load_pipeline(sample_model, device="cpu")
    edit_images(pipe, [image], [instruction], EditSettings(num_inference_steps=2))
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    with pytest.raises(InstructSDError, match="Euler ancestral.*euler, ddim"):
        edit_images(pipe, [image], [instruction], EditSettings(num_inference_steps=2, scheduler="euler_ancestral"))

    ship_scheduler(sample_model, "ddim")  # what pretrain-tiny does with the card's sampler
    pipe = load_pipeline(sample_model, device="cpu")
    first = edit_images(pipe, [image], [instruction], EditSettings(num_inference_steps=2), seeds=[3])[0]
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "sample"
    again = edit_images(pipe, [image], [instruction], EditSettings(num_inference_steps=2, scheduler="ddim"), seeds=[3])[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
