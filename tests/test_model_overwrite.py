"""`model init-tiny/init-hub/merge-lora --overwrite` replace only model folders instructsd wrote (issue 17, defect 7)."""

from __future__ import annotations

from instructsd.cli import run
from instructsd.files import OUTPUT_MARKER


def test_overwrite_never_deletes_a_folder_instructsd_did_not_write(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    for argv in (["model", "init-tiny", str(precious), "--overwrite"],
                 ["model", "init-hub", str(precious), "--layout", "sd15", "--overwrite"],
                 ["model", "merge-lora", str(tmp_path / "no-run"), "--out", str(precious), "--overwrite"]):
        assert run(argv) == 1
        assert "was not written by instructsd" in capsys.readouterr().err
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.tex"]


def test_overwrite_replaces_a_model_instructsd_wrote(tmp_path, capsys):
    out = tmp_path / "m"
    assert run(["model", "init-tiny", str(out), "--seed", "1"]) == 0
    assert (out / OUTPUT_MARKER).is_file() and (out / "model_index.json").is_file()
    weights = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert run(["model", "init-tiny", str(out), "--seed", "1"]) == 1  # still refused without --overwrite
    assert run(["model", "init-tiny", str(out), "--seed", "2", "--overwrite"]) == 0
    assert (out / OUTPUT_MARKER).is_file()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != weights
