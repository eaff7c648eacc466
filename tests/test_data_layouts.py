"""Paired datasets as they are distributed (issue 12): fabricated copies of each layout's
on-disk tree, built with tiny PIL images, checked for pairs, official splits and groups."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import photo
from instructsd.cli import run
from instructsd.data.write import build_mixture
from instructsd.data.layouts import PairRule
from instructsd.data.mixture import parse_mixture
from instructsd.data.sources import PairedSource
from instructsd.errors import InstructSDError

SIZE = 16


def _write(root: Path, pairs: list[tuple[str, str]], extra: tuple[str, ...] = ()) -> None:
    """Each (input, target) path pair: a distinct clean target and its input, target // 3,
    so a pair can be checked exactly. ``extra`` files belong to no pair (other versions)."""
    seeds = {}
    for inp, target in pairs:
        seed = seeds.setdefault(target, len(seeds))
        clean = photo(seed, (SIZE, SIZE))
        for path, im in ((target, clean), (inp, clean.point(lambda v: v // 3))):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            im.save(root / path)
    for k, path in enumerate(extra):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        photo(1000 + k, (SIZE, SIZE)).save(root / path)


def _gopro() -> list[tuple[str, str]]:
    seqs = {"train": ("GOPR0372_07_00", "GOPR0374_11_01", "GOPR0378_13_00"), "test": ("GOPR0384_11_00",)}
    return [(f"GOPRO_Large/{part}/{seq}/blur/{f:06d}.png", f"GOPRO_Large/{part}/{seq}/sharp/{f:06d}.png")
            for part, names in seqs.items() for seq in names for f in (47, 48)]


def _reds(prefix: str) -> list[tuple[str, str]]:
    def top(part: str) -> str:
        return f"{part}/" if prefix == "nested" else ""
    return [(f"{top(part)}{part}_blur/{clip:03d}/{f:08d}.png", f"{top(part)}{part}_sharp/{clip:03d}/{f:08d}.png")
            for part, clips in (("train", (0, 1, 2)), ("val", (0,))) for clip in clips for f in (0, 1)]


LAYOUTS = {
    # name: (mixture `paired` keys beyond the root, the files, extra files, splits expected)
    "gopro": ({"layout": "gopro"}, _gopro(),
              [p.replace("/blur/", "/blur_gamma/") for p, _ in _gopro()], {"train", "validation", "test"}),
    "reds-nested": ({"layout": "reds"}, _reds("nested"),
                    ["train/train_blur_jpeg/000/00000000.png"], {"train", "validation", "test"}),
    "reds-flat": ({"layout": "reds"}, _reds("flat"), ["test_blur/000/00000000.png"], {"train", "validation", "test"}),
    "rain13k": ({"layout": "rain13k"},
                [(f"train/Rain13K/input/{i}.png", f"train/Rain13K/target/{i}.png") for i in range(1, 5)]
                + [(f"test/{t}/input/{i}.png", f"test/{t}/target/{i}.png")
                   for t in ("Rain100H", "Rain100L", "Test100", "Test1200", "Test2800") for i in (1, 2)],
                [], {"train", "validation", "test"}),
    "rain13k-jorder": ({"layout": "rain13k"},
                       [(f"RainTrainH/rain/norain-{i}x{v}.png", f"RainTrainH/norain/norain-{i}.png")
                        for i in range(1, 5) for v in (2, 3)]
                       + [(f"Rain100H/rain/X2/norain-{i}x2.png", f"Rain100H/norain/norain-{i}.png") for i in (1, 2)]
                       + [(f"RainTrainL/rain-{i}.png", f"RainTrainL/norain-{i}.png") for i in (1, 2)],
                       [], {"train", "validation", "test"}),
    "lol": ({"layout": "lol"},
            [(f"LOLdataset/our485/low/{i}.png", f"LOLdataset/our485/high/{i}.png") for i in (2, 5, 7, 9)]
            + [(f"LOLdataset/eval15/low/{i}.png", f"LOLdataset/eval15/high/{i}.png") for i in (1, 22)],
            [], {"train", "validation", "test"}),
    "lol-v2": ({"layout": "lol"},
               [(f"LOL-v2/Real_captured/{p}/Low/low{i:05d}.png", f"LOL-v2/Real_captured/{p}/Normal/normal{i:05d}.png")
                for p, ids in (("Train", (1, 2, 3)), ("Test", (690, 691))) for i in ids]
               + [(f"LOL-v2/Synthetic/{p}/Low/r{i:04d}t.png", f"LOL-v2/Synthetic/{p}/Normal/r{i:04d}t.png")
                  for p, ids in (("Train", (1, 2)), ("Test", (9,))) for i in ids],
               [], {"train", "validation", "test"}),
    "sidd": ({"layout": "sidd"},
             [(f"SIDD_Medium_Srgb/Data/{s}/{s[:4]}_NOISY_SRGB_{n}.PNG", f"SIDD_Medium_Srgb/Data/{s}/{s[:4]}_GT_SRGB_{n}.PNG")
              for s in ("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N",
                        "0003_001_S6_00100_00060_3200_H", "0004_001_S6_00100_00060_4400_L") for n in ("010", "011")],
             [], {"train", "validation"}),
    "sidd-no-prefix": ({"layout": "sidd"},
                       [(f"Data/{s}/NOISY_SRGB_{n}.PNG", f"Data/{s}/GT_SRGB_{n}.PNG")
                        for s in ("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N",
                                  "0003_001_S6_00100_00060_3200_H") for n in ("010", "011")],
                       [], {"train", "validation"}),
    "dpdd": ({"layout": "dpdd"},
             [(f"dd_dp_dataset_png/{p}_c/source/{n}.png", f"dd_dp_dataset_png/{p}_c/target/{n}.png")
              for p, names in (("train", ("1P0A1031", "1P0A1032", "1P0A1040")), ("val", ("1P0A2000",)),
                               ("test", ("1P0A3000", "1P0A3001"))) for n in names],
             ["dd_dp_dataset_png/train_l/source/1P0A1031_L.png", "dd_dp_dataset_png/train_r/source/1P0A1031_R.png"],
             {"train", "validation", "test"}),
    "fivek": ({"layout": "fivek", "expert": "A"},
              [(f"fivek/input/a{i:04d}.png", f"fivek/expertA/a{i:04d}.png") for i in range(1, 6)],
              [f"fivek/expert{e}/a{i:04d}.png" for e in "BCDE" for i in range(1, 6)], {"train", "validation"}),
    "folders-rule": ({"layout": "folders", "input": "low", "target": "normal", "task": "lowlight",
                      "pair": {"input": r"low(\d+)", "target": "normal{1}"}},
                     [(f"low/low{i:05d}.png", f"normal/normal{i:05d}.png") for i in range(1, 5)], [],
                     {"train", "validation"}),
}


def _component(name: str, root: Path) -> dict:
    keys, _, _, _ = LAYOUTS[name]
    paired = {k: v for k, v in keys.items() if k != "task"}
    if paired["layout"] == "folders":
        paired.update(input=str(root / paired["input"]), target=str(root / paired["target"]))
    else:
        paired["root"] = str(root)
    return {"paired": paired, **({"task": keys["task"]} if "task" in keys else {})}


def fabricate(name: str, root: Path) -> dict:
    """Write layout ``name``'s fabricated copy under ``root``; return its mixture mapping."""
    _, pairs, extra, _ = LAYOUTS[name]
    _write(root, pairs, tuple(extra))
    return {"seed": 0, "size": SIZE, "chunk_size": 8, "val_fraction": 0.3, "instructions": "fixed",
            "components": [_component(name, root)]}


def splits_report(ds) -> dict:
    """split -> rows, and the groups found in more than one split."""
    where = defaultdict(set)
    for split, d in ds.items():
        for group in d["group"]:
            where[group].add(split)
    return {"rows": {s: len(d) for s, d in ds.items()},
            "straddling": sorted(g for g, s in where.items() if len(s) > 1)}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_pairs_files_keeps_official_splits_and_never_splits_a_group(name, tmp_path):
    mix = fabricate(name, tmp_path / "data")
    keys, pairs, _, expected = LAYOUTS[name]
    src = PairedSource(**{k: v for k, v in mix["components"][0]["paired"].items()
                          if k in ("layout", "root", "input", "target", "pair")},
                       options={k: v for k, v in keys.items() if k == "expert"})
    # Every fabricated pair is found, and nothing else (blur_gamma, other experts, _l/_r views).
    found = {(Path(a).relative_to(tmp_path / "data").as_posix(), Path(b).relative_to(tmp_path / "data").as_posix())
             for _, a, b in src.pairs}
    assert found == set(pairs)
    for _, a, b in src.pairs:
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)) // 3)

    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    report = splits_report(ds)
    assert set(ds) == expected and all(report["rows"].values())
    assert report["straddling"] == []
    assert sum(report["rows"].values()) == len(pairs)  # one pass over train, each test pair once
    assert (tmp_path / "ds" / "skipped.jsonl").read_text() == ""
    # Official test parts never reach train or validation, and are named in `part`.
    official_test = {"test", "val_blur", "rain100h", "rain100l", "test100", "test1200", "test2800", "eval15", "test_c"}
    for split, d in ds.items():
        in_test_part = {p.lower() in official_test for p in d["part"]}
        assert in_test_part == {split == "test"}, (split, set(d["part"]))
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "## Splits" in card and "| test |" in card or "test" not in ds


def test_groups_are_the_sequence_clip_scene_or_ground_truth(tmp_path):
    groups = {}
    for name in ("gopro", "reds-nested", "sidd", "rain13k-jorder", "dpdd"):
        mix = fabricate(name, tmp_path / name)
        src = PairedSource(**{k: v for k, v in mix["components"][0]["paired"].items()})
        groups[name] = dict(zip(src.names, src.groups))
    assert groups["gopro"]["GOPRO_Large/train/GOPR0372_07_00/blur/000047"] == "GOPRO_Large/train/GOPR0372_07_00"
    assert groups["reds-nested"]["train/train_blur/001/00000001"] == "train/train_blur/001"
    assert (groups["sidd"]["SIDD_Medium_Srgb/Data/0002_001_S6_00100_00020_3200_N/0002_NOISY_SRGB_011"]
            == "SIDD_Medium_Srgb/Data/0002_001_S6_00100_00020_3200_N")
    jorder = groups["rain13k-jorder"]
    assert jorder["RainTrainH/rain/norain-3x2"] == jorder["RainTrainH/rain/norain-3x3"]  # one ground truth
    assert len(set(groups["dpdd"].values())) == len(groups["dpdd"])  # single images: a photo each


def test_fivek_picks_an_expert_and_groups_by_photo_across_experts(tmp_path):
    fabricate("fivek", tmp_path)
    a = PairedSource(layout="fivek", root=str(tmp_path), options={"expert": "A"})
    c = PairedSource(layout="fivek", root=str(tmp_path))  # expert C, the literature's usual target
    assert all("/expertA/" in t for _, _, t in a.pairs) and all("/expertC/" in t for _, _, t in c.pairs)
    assert a.groups == c.groups and a.names == c.names
    with pytest.raises(InstructSDError, match="expert must be one of A, B, C, D, E, got 'F'"):
        parse_mixture({"components": [{"paired": {"layout": "fivek", "root": str(tmp_path), "expert": "F"}}]})
    with pytest.raises(InstructSDError, match=r"has no key\(s\) \['expret'\]"):
        parse_mixture({"components": [{"paired": {"layout": "fivek", "root": str(tmp_path), "expret": "A"}}]})


def test_gopro_blur_gamma_is_a_choice(tmp_path):
    fabricate("gopro", tmp_path)
    src = PairedSource(layout="gopro", root=str(tmp_path), options={"blur": "blur_gamma"})
    assert len(src.pairs) == len(_gopro()) and all("/blur_gamma/" in a for _, a, _ in src.pairs)


def test_a_dataset_with_official_validation_is_not_carved(tmp_path):
    mix = fabricate("dpdd", tmp_path / "data")
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    assert set(ds["validation"]["part"]) == {"val_c"} and set(ds["train"]["part"]) == {"train_c"}


def test_count_sizes_training_and_test_count_caps_the_official_parts(tmp_path):
    mix = fabricate("lol", tmp_path / "data")
    mix["components"][0].update(count=10, test_count=1)
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    assert len(ds["train"]) + len(ds["validation"]) == 10 and len(ds["test"]) == 1
    assert splits_report(ds)["straddling"] == []
    only_test = {**mix, "components": [{"paired": {"layout": "lol", "root": str(tmp_path / "data/LOLdataset/eval15")},
                                        "count": 3}]}
    with pytest.raises(InstructSDError, match="no training pairs .*only test"):
        build_mixture(parse_mixture(only_test), tmp_path / "ds2", progress=False)
    only_test["components"][0].pop("count")  # an official test set alone: its pairs, as test
    ds = build_mixture(parse_mixture(only_test), tmp_path / "ds2", progress=False)
    assert len(ds["test"]) == 2 and len(ds["train"]) == 0


def test_unmatched_files_are_an_error_with_counts_or_skipped_and_recorded(tmp_path):
    mix = fabricate("lol", tmp_path / "data")
    photo(50, (SIZE, SIZE)).save(tmp_path / "data/LOLdataset/our485/low/100.png")
    photo(51, (SIZE, SIZE)).save(tmp_path / "data/LOLdataset/our485/low/101.png")
    photo(52, (SIZE, SIZE)).save(tmp_path / "data/LOLdataset/eval15/high/200.png")
    with pytest.raises(InstructSDError, match=r"input without a target: 2 \(e\.g\. LOLdataset/our485/low/100, "
                                              r"LOLdataset/our485/low/101\); target without an input: 1 .*unmatched: skip"):
        build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    mix["components"][0]["paired"]["unmatched"] = "skip"
    ds = build_mixture(parse_mixture(mix), tmp_path / "ds", progress=False)
    assert sum(len(d) for d in ds.values()) == len(LAYOUTS["lol"][1])
    skipped = [json.loads(line) for line in (tmp_path / "ds" / "skipped.jsonl").read_text().splitlines()]
    assert {s["source"] for s in skipped} == {"LOLdataset/our485/low/100", "LOLdataset/our485/low/101",
                                              "LOLdataset/eval15/high/200"}
    assert "Skipped source images: 3" in (tmp_path / "ds" / "README.md").read_text()


def test_pair_rules_fill_templates_and_are_checked():
    rule = PairRule(r"low(\d+)", "normal{1}")
    assert rule.target_for("low00042") == "normal00042" and rule.target_for("high00042") is None
    assert PairRule(r"(?P<id>\d+)_noisy", "{id}_clean").target_for("7_noisy") == "7_clean"
    with pytest.raises(InstructSDError, match=r"uses \{2\} but input 'low\(\\d\+\)' has 1 group"):
        PairRule(r"low(\d+)", "normal{2}")
    with pytest.raises(InstructSDError, match="pair must be \\{input: REGEX, target: TEMPLATE\\}"):
        parse_mixture({"components": [{"paired": {"layout": "lol", "root": ".", "pair": "low->normal"}}]})
    with pytest.raises(InstructSDError, match="not a valid regular expression"):
        parse_mixture({"components": [{"paired": {"layout": "lol", "root": ".",
                                                  "pair": {"input": "low(", "target": "x"}}}]})


@pytest.mark.parametrize("name", ["lol", "dpdd"])
def test_a_layout_trains_and_is_scored_on_its_test_split(name, tiny_model, tmp_path, capsys):
    mix = fabricate(name, tmp_path / "data")
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    ds = tmp_path / "ds"
    assert run(["data", "build", str(ds), "--mixture", str(tmp_path / "mix.yaml"), "--no-progress"]) == 0
    assert "test: " in capsys.readouterr().out
    assert run(["train", "tiny-cpu", f"base_model={tiny_model}", f"dataset={ds}", f"output_dir={tmp_path / 'run'}",
                "max_train_steps=2", "train_batch_size=2", f"resolution={SIZE}"]) == 0, capsys.readouterr().err
    assert run(["eval", "--model", str(tmp_path / "run" / "final"), "--dataset", str(ds), "--split", "test",
                "--out", str(tmp_path / "eval"), "--steps", "1", "--device", "cpu"]) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    n_test = len(LAYOUTS[name][1]) - sum(1 for a, _ in LAYOUTS[name][1] if "/our485/" in a or "/train_c/" in a
                                         or "/val_c/" in a)
    assert len({r["index"] for r in doc["per_image"]}) == n_test  # every test pair, none of train
    if name == "dpdd":  # compare reads the same split by name
        assert run(["compare", "--models", str(tmp_path / "run" / "final"), "--dataset", str(ds), "--split", "test",
                    "--out", str(tmp_path / "cmp"), "--steps", "1", "--sweep", "", "--clip", "none", "--dino", "none",
                    "--lpips", "none", "--device", "cpu"]) == 0, capsys.readouterr().err
        doc = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
        assert doc["config"]["split"] == "test" and len(doc["config"]["rows"]) == n_test
