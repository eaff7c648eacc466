"""Dataset cards carry a hub metadata block, and `data push` uploads the card (issue 12)."""

from __future__ import annotations

import datasets
import pytest
import yaml
from conftest import photo

from instructsd.cli import run
from instructsd.data.card import SAMPLES_LICENSE, card, size_category, source_licenses
from instructsd.data.write import push_files
from instructsd.errors import InstructSDError


def _metadata(text: str) -> dict:
    assert text.startswith("---\n")
    block, body = text[4:].split("\n---\n", 1)
    assert body.lstrip().startswith("# instructsd")
    return yaml.safe_load(block)


def test_built_dataset_card_has_metadata_and_push_uploads_it_first(tmp_path, photo_folder) -> None:
    out = tmp_path / "pairs"
    assert run(["data", "build", str(out), "--images", str(photo_folder), "--tasks", "denoise", "--size", "16",
                "--crops-per-image", "1", "--val-fraction", "0.25", "--no-progress"]) == 0
    meta = _metadata((out / "README.md").read_text())
    assert meta["license"] == "other" and meta["task_categories"] == ["image-to-image"]
    assert meta["size_categories"] == ["n<1K"] and meta["splits"] == {"train": 3, "validation": 1}
    assert meta["source_licenses"] == [{"source": f"photos in {photo_folder}", "license": meta["source_licenses"][0]["license"]}]
    assert "unknown" in meta["source_licenses"][0]["license"] and meta["source_datasets"] == [f"photos in {photo_folder}"]
    assert meta["builder_command"].startswith(f"instructsd data build {out} --images {photo_folder} --tasks denoise")
    # The hub card format datasets itself reads (push_to_hub merges its dataset_info into this block).
    from huggingface_hub import DatasetCard

    assert DatasetCard((out / "README.md").read_text()).data.license == "other"
    files = push_files(out)
    assert [f.name for f in files][:2] == ["README.md", "samples.png"]
    (out / "README.md").unlink()
    with pytest.raises(InstructSDError, match="README.md"):
        push_files(out)


def test_mixture_card_lists_every_source_and_its_license() -> None:
    feats = datasets.Features({"input_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                               "edited_image": datasets.Image(), "task": datasets.Value("string"),
                               "source": datasets.Value("string"), "group": datasets.Value("string"),
                               "part": datasets.Value("string")})  # the mixture schema (issue 12: groups, official parts)
    row = {"input_image": photo(0, (8, 8)), "edit_prompt": "x", "edited_image": photo(1, (8, 8)), "task": "deblur",
           "source": "s", "group": "s", "part": ""}
    dataset = datasets.DatasetDict({"train": datasets.Dataset.from_list([row] * 3, features=feats),
                                    "validation": datasets.Dataset.from_list([row], features=feats)})
    mixture = {"seed": 0, "size": 8, "components": [
        {"paired": {"layout": "gopro", "root": "/data/GOPRO_Large"}, "count": 2},
        {"source": {"samples": True}, "degradations": ["blur"], "count": 1},
        {"source": {"dataset": "someone/photos"}, "task": "denoise", "count": 1}]}
    meta = _metadata(card(dataset, mixture, ""))
    assert [s["source"] for s in meta["source_licenses"]] == [
        "gopro pairs at /data/GOPRO_Large", SAMPLES_LICENSE["source"], "hub dataset someone/photos"]
    assert meta["splits"] == {"train": 3, "validation": 1} and "--mixture" in meta["builder_command"]
    assert source_licenses(mixture)[1] == SAMPLES_LICENSE


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M")])
def test_size_category(rows, bucket) -> None:
    assert size_category(rows) == bucket
