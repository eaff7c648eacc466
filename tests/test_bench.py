"""`instructsd bench`: MagicBrush and Emu Edit on fabricated local copies in the published schemas.

Every check recomputes a metric independently (numpy, or transformers' CLIP directly) from the
files the run saved, so a wrong definition, a wrong reference image or a wrong resize fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.edit.editor import EditSettings, edit_images, load_pipeline
from instructsd.errors import InstructSDError
from instructsd.eval.bench import BenchOptions, run_bench
from instructsd.eval.bench_metrics import dino_view, pixel_distances
from instructsd.models.tiny import save_tiny_clip, save_tiny_dino

SETTINGS = ["--steps", "2", "--resolution", "32"]
CAPTIONS = ["a photo of a red house", "a photo of a blue house", "a cat on a sofa", "a dog on a sofa"]


def _magicbrush(root: Path, sessions: int = 3, turns: int = 2) -> Path:
    """sessions x turns rows as osunlp/MagicBrush publishes them: data/dev-00000-of-00001.parquet,
    images as datasets Image structs; turn k's source_img is turn k-1's target_img."""
    rows = {k: [] for k in ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")}
    for s in range(sessions):
        source = photo(10 + s, (40, 40))
        for t in range(1, turns + 1):
            target = photo(100 + 10 * s + t, (40, 40))
            rows["img_id"].append(str(327726 + s))
            rows["turn_index"].append(t)
            rows["source_img"].append(source)
            rows["mask_img"].append(Image.new("RGB", (40, 40), "white"))
            rows["instruction"].append(f"make it {['red', 'blue', 'green'][t % 3]}")
            rows["target_img"].append(target)
            source = target
    features = datasets.Features({"img_id": datasets.Value("string"), "turn_index": datasets.Value("int32"),
                                  "source_img": datasets.Image(), "mask_img": datasets.Image(),
                                  "instruction": datasets.Value("string"), "target_img": datasets.Image()})
    path = root / "data" / "dev-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return root


def _emu_edit(root: Path) -> Path:
    """4 rows of facebook/emu_edit_test_set's schema: data/test-00000-of-00001.parquet."""
    features = datasets.Features({"instruction": datasets.Value("string"), "image": datasets.Image(),
                                  "task": datasets.Value("string"), "split": datasets.Value("string"),
                                  "idx": datasets.Value("int64"), "hash": datasets.Value("string"),
                                  "input_caption": datasets.Value("string"), "output_caption": datasets.Value("string")})
    rows = {"instruction": ["make the house blue", "put a dog on the sofa", "make the house blue", "remove the cat"],
            "image": [photo(1, (48, 40)), photo(2, (40, 40)), photo(1, (48, 40)), photo(3, (40, 40))],
            "task": ["color", "add", "color", "remove"], "split": ["test"] * 4, "idx": [0, 1, 2, 3],
            "hash": ["h0", "h1", "h2", "h3"],
            "input_caption": [CAPTIONS[0], CAPTIONS[2], CAPTIONS[0], CAPTIONS[2]],
            "output_caption": [CAPTIONS[1], CAPTIONS[3], CAPTIONS[1], "a sofa"]}
    path = root / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return root


@pytest.fixture(scope="module")
def magicbrush(tmp_path_factory) -> Path:
    return _magicbrush(tmp_path_factory.mktemp("magicbrush"))


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("bench-nets")
    return str(save_tiny_clip(root / "clip", CAPTIONS + ["a sofa"])), str(save_tiny_dino(root / "dino"))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def _l1(a: Image.Image, b: Image.Image) -> float:
    """Independent L1: output resized (PIL bicubic) to the reference's size, RGB / 255, mean |diff|."""
    a = a.convert("RGB").resize(b.size, Image.Resampling.BICUBIC) if a.size != b.size else a.convert("RGB")
    return float(np.abs(np.asarray(a, np.float64) / 255 - np.asarray(b.convert("RGB"), np.float64) / 255).mean())


# ----------------------------------------------------------------------------
# MagicBrush


def test_magicbrush_l1_matches_a_recomputation_from_the_saved_outputs(tmp_path, magicbrush, tiny_model, capsys) -> None:
    out = tmp_path / "run"
    assert run(["bench", "magicbrush", "--model", tiny_model, "--dataset", str(magicbrush), "--out", str(out),
                *SETTINGS, "--clip", "none", "--dino", "none"]) == 0
    rows = _rows(out)
    assert len(rows) == 6 and {(r["img_id"], r["turn"]) for r in rows} == {(str(327726 + s), t) for s in range(3) for t in (1, 2)}
    targets = datasets.load_dataset("parquet", data_files=str(magicbrush / "data" / "*.parquet"), split="train")
    for r in rows:
        output = Image.open(out / r["output"])
        assert output.size == (32, 32)  # edited at --resolution, scored at the target's 40 x 40
        target = targets[r["row"]]["target_img"]
        assert (targets[r["row"]]["img_id"], targets[r["row"]]["turn_index"]) == (r["img_id"], r["turn"])
        assert r["l1"] == pytest.approx(_l1(output, target), abs=1e-12)
        diff = np.asarray(output.resize((40, 40), Image.Resampling.BICUBIC), np.float64) / 255 - np.asarray(target, np.float64) / 255
        assert r["l2"] == pytest.approx(float((diff**2).mean()), abs=1e-12)
        assert r["l1"] > 0.01  # a random model does not reproduce the target

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "dev"  # the published shard name
    assert metrics["metrics"] == ["l1", "l2"] and metrics["skipped"] == ["clip_i", "dino", "clip_t"]
    final = [r["l1"] for r in rows if r["turn"] == 2]
    assert metrics["final_turn"]["l1"]["mean"] == pytest.approx(np.mean(final))
    assert metrics["final_turn"]["n"] == 3 and metrics["all_turns"]["n"] == 6 and metrics["all_turns"]["n_groups"] == 3
    assert metrics["all_turns"]["l1"]["lo"] <= metrics["all_turns"]["l1"]["mean"] <= metrics["all_turns"]["l1"]["hi"]
    assert set(metrics["per_turn"]) == {"1", "2"}
    assert metrics["fingerprints"]["l1"]["resize"].startswith("output to the reference's size, PIL bicubic")
    assert (out / "rows.csv").read_text().splitlines()[0].startswith("img_id,turn,row")
    assert "final turn" in capsys.readouterr().out


def test_multi_turn_edits_the_models_own_saved_output(tmp_path, magicbrush, tiny_model) -> None:
    out = tmp_path / "run"
    settings = EditSettings(num_inference_steps=2, max_side=32)
    run_bench("magicbrush", BenchOptions(tiny_model, str(magicbrush), out, settings=settings, clip="none", dino="none"))
    rows = {(r["img_id"], r["turn"]): r for r in _rows(out)}
    pipe = load_pipeline(tiny_model, device="cpu")
    source = datasets.load_dataset("parquet", data_files=str(magicbrush / "data" / "*.parquet"), split="train")
    for s in range(3):
        first, second = rows[str(327726 + s), 1], rows[str(327726 + s), 2]
        assert first["input"] == "source" and second["input"] == first["output"]
        # Editing turn 1's saved PNG by turn 2's instruction and seed gives exactly the saved turn 2 ...
        (again,) = edit_images(pipe, [Image.open(out / first["output"]).convert("RGB")], [second["instruction"]],
                               settings, seeds=[second["seed"]])
        saved = np.asarray(Image.open(out / second["output"]).convert("RGB"), np.int16)
        assert np.abs(np.asarray(again, np.int16) - saved).max() <= 1
        # ... and not what editing the dataset's own turn-2 source_img gives (the single-turn setting).
        (independent,) = edit_images(pipe, [source[second["row"]]["source_img"]], [second["instruction"]], settings,
                                     seeds=[second["seed"]])
        assert np.abs(np.asarray(independent, np.int16) - saved).mean() > 1


def test_a_missing_clip_is_skipped_with_a_note_and_the_rest_still_run(tmp_path, magicbrush, tiny_model, nets, capsys) -> None:
    _, dino = nets
    out = tmp_path / "run"
    assert run(["bench", "magicbrush", "--model", tiny_model, "--dataset", str(magicbrush), "--out", str(out),
                *SETTINGS, "--limit", "2", "--clip", str(tmp_path / "no-such-clip"), "--dino", dino]) == 0
    stdout = capsys.readouterr().out
    assert "note: clip_i, clip_t skipped: could not load" in stdout and "--clip" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"] == ["l1", "l2", "dino"] and metrics["skipped"] == ["clip_i", "clip_t"]
    assert any("no-such-clip" in note for note in metrics["notes"])
    rows = _rows(out)
    assert len(rows) == 4  # --limit 2: two sessions, both turns
    for r in rows:
        assert 0 < r["l1"] < 1 and -1 <= r["dino"] <= 1
    fp = metrics["fingerprints"]["dino"]
    assert fp["model"] == dino and len(fp["sha256"]) == 64 and fp["input_side"] == 32
    assert fp["processor"]["image_mean"] and "model.safetensors" in fp["files"]


def test_magicbrush_clip_t_uses_each_targets_local_caption(tmp_path, tiny_model, nets) -> None:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    clip, _ = nets
    data = _magicbrush(tmp_path / "mb", sessions=1)
    path = next((data / "data").glob("*.parquet"))
    rows = datasets.load_dataset("parquet", data_files=str(path), split="train")
    rows.add_column("local_description", CAPTIONS[:2]).to_parquet(str(path))  # as local_descriptions.json has them
    out = tmp_path / "run"
    run_bench("magicbrush", BenchOptions(tiny_model, str(data), out, settings=EditSettings(num_inference_steps=2, max_side=32),
                                         clip=clip, dino="none"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["caption_column"] == "local_description" and metrics["skipped"] == ["dino"]
    model, processor, tokenizer = (CLIPModel.from_pretrained(clip).eval(), CLIPImageProcessor.from_pretrained(clip),
                                   AutoTokenizer.from_pretrained(clip))
    with torch.no_grad():
        for r, caption in zip(_rows(out), CAPTIONS[:2]):
            image = processor(images=[Image.open(out / r["output"]).convert("RGB")], return_tensors="pt")["pixel_values"]
            e_img = getattr(e := model.get_image_features(pixel_values=image), "pooler_output", e)[0]
            t = tokenizer([caption], return_tensors="pt")
            e_txt = getattr(e := model.get_text_features(**t), "pooler_output", e)[0]
            assert r["clip_t"] == pytest.approx(float(e_img @ e_txt / e_img.norm() / e_txt.norm()), abs=1e-5)


def test_a_killed_run_resumes_and_settings_changes_are_refused(tmp_path, magicbrush, tiny_model) -> None:
    out = tmp_path / "run"
    settings = EditSettings(num_inference_steps=2, max_side=32)
    options = BenchOptions(tiny_model, str(magicbrush), out, settings=settings, clip="none", dino="none", limit=2)
    first = run_bench("magicbrush", options)
    assert first.edited == 4
    kept = (out / first.rows[0]["output"]).read_bytes()
    (out / first.rows[3]["output"]).unlink()  # as if killed before the last edit was saved
    again = run_bench("magicbrush", options)
    assert again.edited == 1 and (out / first.rows[0]["output"]).read_bytes() == kept
    assert [r["l1"] for r in again.rows] == pytest.approx([r["l1"] for r in first.rows], abs=1e-12)  # same seed, same edit

    other = BenchOptions(tiny_model, str(magicbrush), out, settings=EditSettings(num_inference_steps=3, max_side=32),
                         clip="none", dino="none", limit=2)
    with pytest.raises(InstructSDError, match="other settings; pass --overwrite"):
        run_bench("magicbrush", other)
    assert run_bench("magicbrush", BenchOptions(**{**other.__dict__, "overwrite": True})).edited == 4

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.jpg").write_bytes(b"not ours")
    with pytest.raises(InstructSDError, match="did not write"):
        run_bench("magicbrush", BenchOptions(tiny_model, str(magicbrush), foreign, settings=settings, clip="none", dino="none"))
    assert (foreign / "mine.jpg").read_bytes() == b"not ours" and len(list(foreign.iterdir())) == 1


def test_a_copy_without_the_published_columns_is_refused(tmp_path, tiny_model) -> None:
    path = tmp_path / "bad" / "test.parquet"
    path.parent.mkdir()
    datasets.Dataset.from_dict({"instruction": ["x"], "input_image": [photo(0, (16, 16))]}).to_parquet(str(path))
    with pytest.raises(InstructSDError, match="lacks the magicbrush column"):
        run_bench("magicbrush", BenchOptions(tiny_model, str(path.parent), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------
# Emu Edit


def test_emu_edit_scores_outputs_against_their_input_and_captions(tmp_path, tiny_model, nets) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    clip, dino = nets
    data = _emu_edit(tmp_path / "emu")
    out = tmp_path / "run"
    assert run(["bench", "emu-edit", "--model", tiny_model, "--dataset", str(data), "--out", str(out), *SETTINGS,
                "--clip", clip, "--dino", dino]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["rows"] == 4 and metrics["skipped"] == []
    assert metrics["metrics"] == ["clip_dir", "clip_img", "clip_out", "l1", "dino"]
    assert set(metrics["per_task"]) == {"all", "add", "color", "remove"}
    assert metrics["per_task"]["all"]["n_groups"] == 3  # rows 0 and 2 share their input picture

    source = datasets.load_dataset("parquet", data_files=str(data / "data" / "*.parquet"), split="train")
    model, processor = CLIPModel.from_pretrained(clip).eval(), CLIPImageProcessor.from_pretrained(clip)

    def embed(image: Image.Image) -> torch.Tensor:
        with torch.no_grad():
            e = model.get_image_features(pixel_values=processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"])
        e = getattr(e, "pooler_output", e)[0]
        return e / e.norm()

    for r in _rows(out):
        output, image = Image.open(out / r["output"]), source[r["row"]]["image"]
        assert (r["idx"], r["task"], r["hash"]) == (source[r["row"]]["idx"], source[r["row"]]["task"], source[r["row"]]["hash"])
        assert r["l1"] == pytest.approx(_l1(output, image), abs=1e-12)  # against the input, at the input's size
        assert r["clip_img"] == pytest.approx(float(embed(output) @ embed(image)), abs=1e-5)
        assert -1 <= r["clip_dir"] <= 1 and -1 <= r["clip_out"] <= 1 and -1 <= r["dino"] <= 1
    assert metrics["fingerprints"]["clip_dir"]["model"] == clip
    assert metrics["fingerprints"]["dino"]["view"] == "shorter side to 37 bicubic, centre crop 32"


# ----------------------------------------------------------------------------
# Pinned pieces


def test_pixel_distances_resize_the_output_to_the_reference_and_never_the_reference() -> None:
    reference = Image.fromarray(np.full((20, 30, 3), 100, np.uint8))
    output = Image.fromarray(np.full((8, 16, 3), 110, np.uint8))  # a flat image stays flat under bicubic
    assert pixel_distances(output, reference) == pytest.approx({"l1": 10 / 255, "l2": (10 / 255) ** 2})


def test_dino_view_is_magicbrushs_resize_256_then_centre_crop_224() -> None:
    image = Image.fromarray(np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8))
    view = dino_view(image, 224)
    assert view.size == (224, 224)
    resized = image.resize((341, 256), Image.Resampling.BICUBIC)  # shorter side 256, aspect kept
    assert np.array_equal(np.asarray(view), np.asarray(resized)[16:240, 58:282])
