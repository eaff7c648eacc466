"""`instructsd compare` end to end on two tiny models, a tiny dataset and tiny CLIP / DINO networks."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import TEST_SPEC, photo

from instructsd.cli import run
from instructsd.data.build import build_dataset
from instructsd.errors import InstructSDError
from instructsd.eval.compare import _generalization, model_labels
from instructsd.eval.rows import TASK_CAPTIONS
from instructsd.models.tiny import save_tiny_clip, save_tiny_dino
from instructsd.models.tiny import init_tiny


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("compare")
    other = init_tiny(root / "other", spec=TEST_SPEC, seed=1)
    build_dataset([(f"p{i}", photo(i, (40, 40))) for i in range(4)], root / "data", tasks=("denoise", "cartoonize"),
                  size=32, crops_per_image=1, val_fraction=0.5, progress=False)
    clip, dino = save_tiny_clip(root / "clip", [c for pair in TASK_CAPTIONS.values() for c in pair]), save_tiny_dino(root / "dino")
    out = root / "run"
    code = run(["compare", "--models", tiny_model, f"other={other}", "--dataset", str(root / "data"), "--out", str(out),
                "--per-task", "1", "--steps", "1", "--sweep", "1.0,1.5", "--instructions", "seen,held_out",
                "--clip", str(clip), "--dino", str(dino), "--lpips", "none", "--device", "cpu"])
    assert code == 0
    return out, Path(tiny_model).name


def test_compare_writes_every_file_and_scores_every_method(comparison) -> None:
    out, first = comparison
    doc = json.loads((out / "metrics.json").read_text())
    methods = {"identity", "ground_truth", first, "other"}
    assert {(r["task"], r["method"]) for r in doc["summary"]} == {(t, m) for t in ("denoise", "cartoonize", "all") for m in methods}
    for row in doc["summary"]:
        for key in doc["metrics"]:
            assert row[f"{key}_lo"] <= row[key] + 1e-12 and row[key] <= row[f"{key}_hi"] + 1e-12
    assert {"clip_dir", "clip_t", "clip_i", "dino", "psnr_y", "l1"} <= set(doc["metrics"])
    assert any("lpips skipped" in n for n in doc["notes"])

    # Same images, instructions and seeds for every method.
    main = [r for r in doc["per_image"]]
    by_method: dict[str, list] = {}
    for r in main:
        by_method.setdefault(r["method"], []).append((r["index"], r["instruction"], r["seed"]))
    assert len({tuple(v) for v in by_method.values()}) == 1

    # Reproducibility: config, seeds, versions, model hashes.
    assert doc["seeds"]["base"] == 0 and doc["config"]["settings"]["num_inference_steps"] == 1
    assert doc["provenance"]["packages"]["diffusers"]
    hashes = doc["provenance"]["models"]["other"]["sha256"]
    assert any(k.endswith(".safetensors") for k in hashes) and all(len(v) == 64 for v in hashes.values())

    # Sweep: one point per model and scale; generalisation: seen and held-out for each model.
    assert {(p["method"], p["image_guidance"]) for p in doc["sweep"]} == {(m, s) for m in (first, "other") for s in (1.0, 1.5)}
    assert {(g["method"], g["instruction_set"]) for g in doc["generalization"]} == {
        (m, s) for m in (first, "other") for s in ("dataset", "seen", "held_out")}

    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["per_image"]) + len(doc["generalization_per_image"]) + len(doc["sweep_per_image"])
    for r in rows:
        assert (out / r["image"]).is_file(), r["image"]


def test_compare_report_parses_and_every_image_it_names_exists(comparison) -> None:
    out, first = comparison
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    parser.close()
    assert parser.tags[0] == "html" and "svg" in parser.tags and "polyline" in parser.tags  # bar charts and sweep curve
    assert parser.srcs and set(parser.srcs) <= set(parser.hrefs)
    for src in parser.srcs:
        assert not src.startswith(("/", "http")) and (out / src).is_file(), src
    # Per-task grids: input | ground truth | each model, for both tasks.
    for column in ("input", "ground truth", first, "other"):
        assert f"<th>{column}</th>" in page
    assert "<h3>denoise</h3>" in page and "<h3>cartoonize</h3>" in page
    assert "Instruction generalisation" in page and "gap (held_out − seen)" in page and "sha256" in page
    # Every bar chart has a legend naming each method it draws (colour swatch + label).
    charts = [c for c in page.split("<svg")[1:] if "higher is better" in c or "lower is better" in c]
    assert charts and all('class="legend"' in c and f">{first}</text>" in c and ">other</text>" in c for c in charts)
    assert "<th>photos</th>" in page  # how many photos each interval rests on


def test_model_labels_and_cli_errors(tmp_path, capsys) -> None:
    assert model_labels(["runs/a/final", "org/model", "x=path", "runs/b/final"]) == {
        "final": "runs/a/final", "model": "org/model", "x": "path", "final-2": "runs/b/final"}
    with pytest.raises(InstructSDError, match="reserved"):
        model_labels(["identity=some/path"])
    assert run(["compare", "--models", "a", "--dataset", str(tmp_path / "none"), "--clip", "none", "--dino", "none",
                "--lpips", "none", "--sweep", ""]) == 1
    err = capsys.readouterr().err
    assert "no dataset at" in err and str(tmp_path / "none") in err and "instructsd data build" in err


def test_generalization_table_splits_single_and_compound_tasks() -> None:
    rows = [{"task": task, "method": "m", "instruction_set": which, "psnr": value}
            for task, base in (("denoise", 20.0), ("deblur+denoise", 15.0))
            for which, shift in (("seen", 1.0), ("held_out", 0.0)) for value in (base + shift, base + shift + 2)]
    table = {(r["kind"], r["instruction_set"]): r for r in _generalization(rows, ["psnr"])}
    assert set(table) == {(k, s) for k in ("single", "compound") for s in ("seen", "held_out")}
    assert table["single", "seen"]["psnr"] == 22.0 and table["compound", "held_out"]["psnr"] == 16.0
    assert all(r["n"] == 2 and r["psnr_lo"] <= r["psnr"] <= r["psnr_hi"] for r in table.values())
