"""Mixture builds: sources, paired layouts, teachers, policies, resume, workers, shards, skips."""

from __future__ import annotations

import io
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
from instructsd.data import rows as rows_module
from instructsd.data import write
from instructsd.data.mixture import parse_mixture
from instructsd.data.plan import make_plan
from instructsd.data.write import build_mixture
from instructsd.data.sources import HubSource, PairedSource
from instructsd.errors import InstructSDError


def _mix(**over) -> dict:
    base = {"seed": 0, "size": 32, "min_size": 32, "chunk_size": 4, "val_fraction": 0.25}
    return {**base, **over}


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
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixphotos")
    (folder / "nested" / "deeper").mkdir(parents=True)
    for i in range(5):
        sub = folder if i < 2 else folder / "nested" if i < 4 else folder / "nested" / "deeper"
        photo(i, (48, 40)).save(sub / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def synth_mix(photos) -> dict:
    return _mix(components=[
        {"source": {"folder": str(photos)}, "degradations": ["blur", "gaussian_noise"], "count": 9},
        {"task": "cartoonize", "source": {"folder": str(photos)}, "teacher": "cartoonizer", "count": 6},
        {"source": {"folder": str(photos)}, "task": "lowlight"},
    ])


@pytest.fixture(scope="module")
def reference(synth_mix, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ds"
    return _rows(build_mixture(parse_mixture(synth_mix), out, progress=False))


# --- what a build makes --------------------------------------------------------------------


def test_build_makes_counts_tasks_splits_and_a_card(synth_mix, reference, tmp_path):
    rows = reference["train"] + reference["validation"]
    tasks = [r["task"] for r in rows]
    assert tasks.count("deblur+denoise") == 9 and tasks.count("cartoonize") == 6
    assert tasks.count("lowlight") == 5  # no count: one pass over the source
    assert all(r["edit_prompt"] for r in rows)
    # split by photo, and a photo is on the same side for every task
    side = {}
    for split, rs in reference.items():
        for r in rs:
            photo_name = r["source"].split("/", 1)[1]
            assert side.setdefault(photo_name, split) == split
    assert set(side.values()) == {"train", "validation"}
    assert {r["source"].split("/", 1)[1] for r in rows} >= {"p0", "nested/p2", "nested/deeper/p4"}
    out = tmp_path / "again"
    ds = build_mixture(parse_mixture(synth_mix), out, progress=False)
    assert _rows(ds) == reference  # reproducible
    plain = datasets.load_from_disk(str(out))
    assert plain["train"][0]["input_image"].size == (32, 32)
    card = (out / "README.md").read_text()
    assert "| deblur+denoise |" in card and "gaussian_noise" in card and "samples.png" in card
    assert Image.open(out / "samples.png").size[0] > 100
    assert (out / "skipped.jsonl").read_text() == ""
    assert yaml.safe_load((out / "mixture.yaml").read_text())["components"][0]["count"] == 9


def test_identical_output_with_two_workers(synth_mix, reference, tmp_path):
    ds = build_mixture(parse_mixture(synth_mix), tmp_path / "ds", num_proc=2, progress=False)
    assert _rows(ds) == reference


def test_resume_after_an_interrupted_build_gives_the_same_rows(synth_mix, reference, tmp_path, monkeypatch):
    real, calls = write.write_chunk, []

    def dies_after_three(plan, c, parts):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed
        calls.append(c)
        real(plan, c, parts)

    monkeypatch.setattr(write, "write_chunk", dies_after_three)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        build_mixture(parse_mixture(synth_mix), out, progress=False)
    parts = tmp_path / "ds.parts"
    assert not out.exists() and len(list((parts / "chunks").iterdir())) == 3
    (parts / "chunks" / ".000005.tmp-dead").mkdir()  # a chunk the kill interrupted mid-write
    monkeypatch.setattr(write, "write_chunk", lambda plan, c, p: (calls.append(c), real(plan, c, p)))
    ds = build_mixture(parse_mixture(synth_mix), out, progress=False)
    assert sorted(calls) == list(range(make_plan(parse_mixture(synth_mix)).n_chunks))  # none twice
    assert _rows(ds) == reference
    assert not parts.exists()


def test_parts_of_another_mixture_are_not_reused(synth_mix, tmp_path):
    parts = tmp_path / "s0"
    build_mixture(parse_mixture(synth_mix), parts, shard=(0, 2), progress=False)
    other = {**synth_mix, "seed": 1}
    with pytest.raises(InstructSDError, match="different mixture"):
        build_mixture(parse_mixture(other), parts, shard=(0, 2), progress=False)


def test_shards_joined_equal_a_single_build(synth_mix, reference, tmp_path, capsys):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(synth_mix))
    for i in range(3):
        assert run(["data", "build", str(tmp_path / f"s{i}"), "--mixture", str(path), "--shard", f"{i}/3",
                    "--no-progress"]) == 0
    assert run(["data", "join", str(tmp_path / "j"), str(tmp_path / "s0"), str(tmp_path / "s2"),
                "--no-progress"]) == 1
    assert "shard(s) 1/3" in capsys.readouterr().err
    assert run(["data", "join", str(tmp_path / "j"), *(str(tmp_path / f"s{i}") for i in range(3)),
                "--no-progress"]) == 0
    assert _rows(datasets.load_from_disk(str(tmp_path / "j"))) == reference


# --- instruction policy and columns --------------------------------------------------------


@pytest.mark.parametrize("policy", ["fixed", "deferred"])
def test_instruction_policies(photos, tmp_path, policy):
    mix = _mix(instructions=policy, components=[
        {"source": {"folder": str(photos)}, "degradations": ["gaussian_blur", "jpeg"]},
        {"source": {"folder": str(photos)}, "task": "denoise"}])
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    rows = ds["train"].to_list() + ds["validation"].to_list()
    prompts = {r["task"]: r["edit_prompt"] for r in rows}
    if policy == "fixed":
        assert prompts == {"deblur+jpeg": "Deblur the image and remove the JPEG artifacts from it.",
                           "denoise": "Denoise the image."}
    else:
        assert set(prompts.values()) == {""} and set(prompts) == {"deblur+jpeg", "denoise"}


def test_post_column_layouts(photos, tmp_path):
    mix = _mix(columns={"input_image": "original_image", "edited_image": "cartoonized_image"},
               components=[{"task": "cartoonize", "source": {"folder": str(photos)}, "teacher": "cartoonizer"}])
    ds = build_mixture(parse_mixture(mix), tmp_path / "a", progress=False)
    assert ds["train"].column_names == ["original_image", "edit_prompt", "cartoonized_image", "task", "source",
                                         "group", "part", "edit_params"]
    mix["columns"] = {"edit_prompt": "instruction", "edited_image": "ground_truth_image"}
    ds = build_mixture(parse_mixture(mix), tmp_path / "b", progress=False)
    assert ds["train"].column_names == ["input_image", "instruction", "ground_truth_image", "task", "source",
                                         "group", "part", "edit_params"]


def test_weights_split_a_total(photos):
    mix = _mix(total=30, components=[
        {"source": {"folder": str(photos)}, "task": "denoise", "weight": 2},
        {"source": {"folder": str(photos)}, "task": "deblur", "weight": 1}])
    assert make_plan(parse_mixture(mix)).counts == [20, 10]


# --- skips and early errors ----------------------------------------------------------------


def test_corrupt_and_small_images_are_skipped_and_recorded(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(1, (48, 40)).save(folder / "good.png")
    photo(2, (20, 20)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = photo(3, (48, 40))
    good.save(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    mix = _mix(components=[{"source": {"folder": str(folder)}, "task": "denoise"}])
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    assert len(ds["train"]) + len(ds["validation"]) == 1
    skipped = [json.loads(x) for x in (tmp_path / "ds" / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["source"]: s["reason"] for s in skipped}
    assert set(reasons) == {"tiny", "broken", "truncated"}
    assert "smaller than min_size 32" in reasons["tiny"]
    assert "broken.jpg" in reasons["broken"] and "truncated" in reasons["truncated"]
    assert "Skipped source images: 3" in (tmp_path / "ds" / "README.md").read_text()


@pytest.mark.parametrize("component, message", [
    ({"source": {"folder": "/nope/photos"}, "task": "denoise"}, "does not exist"),
    ({"paired": {"layout": "hdr", "root": "."}}, "unknown paired layout 'hdr'; choose from: reds"),
    ({"source": {"samples": True}, "degradations": ["fog"]}, "unknown degradation 'fog'"),
    ({"source": {"samples": True}, "task": "colorize"}, "built-in task"),
    ({"source": {"samples": True}, "task": "cartoonize", "teacher": "nosuchmodule:fn"}, "cannot import teacher"),
    ({"source": {"samples": True}, "task": "cartoonize", "teacher": {"onnx": "/nope.onnx"}}, "does not exist"),
    ({"source": {"samples": True}, "task": "denoise", "count": 2, "weight": 1}, "not both"),
])
def test_bad_mixtures_fail_before_any_work(tmp_path, component, message):
    with pytest.raises(InstructSDError, match=message):
        build_mixture(parse_mixture(_mix(components=[component])), tmp_path / "ds", progress=False)
    assert not list(tmp_path.iterdir())


def test_bad_top_level_keys_and_policy():
    with pytest.raises(InstructSDError, match="unknown key"):
        parse_mixture(_mix(componets=[]))
    with pytest.raises(InstructSDError, match="instructions must be one of fixed, sampled, deferred"):
        parse_mixture(_mix(instructions="random", components=[{"source": {"samples": True}, "task": "denoise"}]))


# --- paired layouts ------------------------------------------------------------------------


def _pair(root: Path, a: str, b: str, name: str, seed: int, ext_b: str = ".png") -> None:
    clean = photo(seed, (40, 40))
    for sub, im in ((a, clean.point(lambda v: v // 3)), (b, clean)):
        path = root / sub / name
        if sub == b:
            path = path.with_suffix(ext_b)
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path)


LAYOUT_FIXTURES = {
    "reds": [("train_blur/000", "train_sharp/000", "00000000.png"), ("train_blur/001", "train_sharp/001", "00000000.png"),
             ("val_blur/002", "val_sharp/002", "00000001.png")],
    "gopro": [("train/GOPR0372_07_00/blur", "train/GOPR0372_07_00/sharp", "000047.png"),
              ("test/GOPR0384_11_00/blur", "test/GOPR0384_11_00/sharp", "000001.png")],
    "rain13k": [("train/Rain13K/input", "train/Rain13K/target", "1.jpg"),
                ("train/Rain13K/input", "train/Rain13K/target", "2.jpg")],
    "sidd": [("train/NOISY", "train/GT", "0001.png"), ("train/NOISY", "train/GT", "0002.png")],
    "lol": [("our485/low", "our485/high", "2.png"), ("eval15/low", "eval15/high", "1.png")],
}
LAYOUT_TASK = {"reds": "deblur", "gopro": "deblur", "rain13k": "derain", "sidd": "denoise", "lol": "lowlight"}


@pytest.mark.parametrize("layout", list(LAYOUT_FIXTURES))
def test_paired_layouts_are_ingested(layout, tmp_path):
    root = tmp_path / layout
    for i, (a, b, name) in enumerate(LAYOUT_FIXTURES[layout]):
        _pair(root, a, b, name, i)
    src = PairedSource(layout=layout, root=str(root))
    assert len(src.pairs) == len(LAYOUT_FIXTURES[layout])
    for _, inp, target in src.pairs:
        assert Path(inp).stem == Path(target).stem
        assert np.asarray(Image.open(inp)).mean() < np.asarray(Image.open(target)).mean()
    plan = make_plan(parse_mixture(_mix(components=[{"paired": {"layout": layout, "root": str(root)}}])))
    rows, skipped = rows_module.make_rows(plan, range(plan.n_items))
    assert not skipped and {r["task"] for _, r in rows} == {LAYOUT_TASK[layout]}


def test_sidd_native_layout_and_the_post_mixture_counts(tmp_path):
    sidd = tmp_path / "SIDD" / "Data"
    for i, scene in enumerate(["0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N"]):
        clean = photo(i, (40, 40))
        (sidd / scene).mkdir(parents=True)
        clean.point(lambda v: v // 2).save(sidd / scene / "NOISY_SRGB_010.PNG")
        clean.save(sidd / scene / "GT_SRGB_010.PNG")
    lol = tmp_path / "LOL"
    for i in range(3):
        _pair(lol, "our485/low", "our485/high", f"{i}.png", i)
    mix = _mix(components=[{"paired": {"layout": "sidd", "root": str(tmp_path / "SIDD")}, "count": 8},
                           {"paired": {"layout": "lol", "root": str(lol)}, "count": 5}])
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    tasks = list(ds["train"]["task"]) + list(ds["validation"]["task"])
    assert tasks.count("denoise") == 8 and tasks.count("lowlight") == 5  # reused with new crops
    assert "| denoise | " in (tmp_path / "ds" / "README.md").read_text()


def test_generic_folders_match_by_name_and_refuse_mismatches(tmp_path):
    for i in range(3):
        _pair(tmp_path, "inputs", "targets", f"img{i}.png", i, ext_b=".jpg")
    src = PairedSource(layout="folders", input=str(tmp_path / "inputs"), target=str(tmp_path / "targets"))
    assert [n for n, _, _ in src.pairs] == ["img0", "img1", "img2"]
    photo(9).save(tmp_path / "inputs" / "extra.png")
    with pytest.raises(InstructSDError, match=r"do not match by name: input without a target: 1 \(e.g. inputs/extra\)"):
        PairedSource(layout="folders", input=str(tmp_path / "inputs"), target=str(tmp_path / "targets"))
    with pytest.raises(InstructSDError, match="needs a 'task'"):
        parse_mixture(_mix(components=[{"paired": {"layout": "folders", "input": "a", "target": "b"}}]))


def test_layout_with_unpaired_files_or_no_pairs_is_an_error(tmp_path):
    _pair(tmp_path, "input", "target", "1.png", 0)
    photo(5).save(tmp_path / "input" / "2.png")
    with pytest.raises(InstructSDError, match="input without a target: 1"):
        PairedSource(layout="rain13k", root=str(tmp_path))
    with pytest.raises(InstructSDError, match="no lol pairs.*low/high"):
        PairedSource(layout="lol", root=str(tmp_path))


def test_paired_inputs_of_different_size_are_skipped(tmp_path):
    _pair(tmp_path, "low", "high", "a.png", 0)
    photo(1, (50, 50)).save(tmp_path / "low" / "b.png")
    photo(1, (40, 40)).save(tmp_path / "high" / "b.png")
    plan = make_plan(parse_mixture(_mix(components=[{"paired": {"layout": "lol", "root": str(tmp_path)}}])))
    rows, skipped = rows_module.make_rows(plan, range(plan.n_items))
    assert len(rows) == 1 and "input is 50x50 but target is 40x40" in skipped[0]["reason"]


# --- sources and teachers ------------------------------------------------------------------


def test_dataset_sources_local_and_streaming(tmp_path):
    images = [photo(i, (40, 36)) for i in range(4)]
    images[1] = images[1].convert("L")  # mode conversion
    ds = datasets.Dataset.from_dict({"img": images, "label": list("abcd")},
                                    features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    src = HubSource(str(tmp_path / "saved"), name_column="label")
    assert src.column == "img" and src.names == ["a", "b", "c", "d"] and src.load(1).mode == "RGB"
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    with pytest.raises(InstructSDError, match="streaming needs 'limit'"):
        HubSource(str(tmp_path / "pq"), streaming=True)
    stream = HubSource(str(tmp_path / "pq"), streaming=True, limit=3)
    got = dict(stream.load_many([2, 0]))
    assert sorted(got) == [0, 2]
    assert np.array_equal(np.asarray(got[2]), np.asarray(src.load(2)))
    mix = _mix(components=[{"source": {"dataset": str(tmp_path / "pq"), "streaming": True, "limit": 3},
                            "degradations": ["rain"]}])
    out = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    assert len(out["train"]) + len(out["validation"]) == 3
    with pytest.raises(InstructSDError, match="cannot open dataset"):
        HubSource(str(tmp_path / "missing-dataset"))


def test_function_teacher(tmp_path, monkeypatch):
    (tmp_path / "my_teacher.py").write_text(
        "import numpy as np\n"
        "def invert(rgb):\n"
        "    return 255 - rgb\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mix = _mix(components=[{"task": "cartoonize", "source": {"samples": True}, "teacher": "my_teacher:invert",
                            "count": 2}])
    plan = make_plan(parse_mixture(mix))
    rows, _ = rows_module.make_rows(plan, range(2))
    row = rows[0][1]
    inp = np.asarray(Image.open(io.BytesIO(row["input_image"]["bytes"])))
    out = np.asarray(Image.open(io.BytesIO(row["edited_image"]["bytes"])))
    assert np.array_equal(out, 255 - inp)
    sys.modules.pop("my_teacher", None)


def test_diffusers_pipeline_teacher(tiny_model, tmp_path):
    mix = _mix(components=[{"task": "cartoonize", "source": {"samples": True}, "count": 1,
                            "teacher": {"diffusers": tiny_model, "prompt": "Cartoonize the image.", "steps": 2,
                                        "kwargs": {"image_guidance_scale": 1.5}}}])
    plan = make_plan(parse_mixture(mix))
    rows, skipped = rows_module.make_rows(plan, range(1))
    again, _ = rows_module.make_rows(plan, range(1))
    assert not skipped and rows[0][1]["edited_image"] == again[0][1]["edited_image"]  # seeded per sample
    assert Image.open(io.BytesIO(rows[0][1]["edited_image"]["bytes"])).size == (32, 32)


def test_a_mixture_dataset_trains_in_the_spine(tiny_model, photos, tmp_path, capsys):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(_mix(components=[
        {"source": {"folder": str(photos)}, "degradations": ["noise"], "count": 6},
        {"task": "cartoonize", "source": {"folder": str(photos)}, "teacher": "cartoonizer", "count": 4}])))
    assert run(["data", "build", str(tmp_path / "ds"), "--mixture", str(path), "--num-proc", "2", "--no-progress"]) == 0
    code = run(["train", "tiny-cpu", f"base_model={tiny_model}", f"dataset={tmp_path / 'ds'}",
                f"output_dir={tmp_path / 'run'}", "max_train_steps=2", "train_batch_size=2", "resolution=32"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()


def test_export_parquet_round_trips(synth_mix, reference, tmp_path):
    out = tmp_path / "ds"
    build_mixture(parse_mixture(synth_mix), out, progress=False)
    assert run(["data", "export-parquet", str(out), str(tmp_path / "pq")]) == 0
    back = datasets.load_dataset("parquet", data_files={s: str(tmp_path / "pq" / f"{s}.parquet")
                                                        for s in ("train", "validation")},
                                 cache_dir=str(tmp_path / "cache"))
    assert _rows(back) == reference


def test_onnx_teacher_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises
    model = tmp_path / "cartoon.onnx"
    model.write_bytes(b"\x08\x07")
    with pytest.raises(InstructSDError, match="pip install onnxruntime"):
        parse_mixture(_mix(components=[{"task": "cartoonize", "source": {"samples": True}, "teacher": {"onnx": str(model)}}]))


def test_video_frames_of_one_sequence_share_a_split(tmp_path):
    for seq in range(4):
        for frame in range(3):
            _pair(tmp_path, f"train_blur/{seq:03d}", f"train_sharp/{seq:03d}", f"{frame:08d}.png", seq * 3 + frame)
    plan = make_plan(parse_mixture(_mix(val_fraction=0.3,
                                        components=[{"paired": {"layout": "reds", "root": str(tmp_path)}}])))
    rows, _ = rows_module.make_rows(plan, range(plan.n_items))
    side = {}
    for split, row in rows:
        seq = row["source"].split("/")[2]
        assert side.setdefault(seq, split) == split
    assert set(side.values()) == {"train", "validation"}
