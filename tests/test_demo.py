"""The web demo end to end in headless Chromium: upload, instruct, submit, get the edit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

gr = pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'instructsd[demo]'")


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """The demo on a loopback port, with the tiny model and tiny limits."""
    from instructsd.app.demo import DemoLimits, build_demo, launch
    from instructsd.edit.editor import load_pipeline

    run_dir = tmp_path_factory.mktemp("demo")
    limits = DemoLimits(max_upload_mb=1, max_pixels=200_000, max_side=64, max_steps=3)
    demo = build_demo(load_pipeline(tiny_model, device="cpu"), tiny_model, run_dir, limits)
    _, url, _ = launch(demo, run_dir, limits, block=False)
    yield demo, url, run_dir
    demo.close()


def test_demo_binds_loopback_and_keeps_uploads_in_a_private_folder(served):
    demo, url, run_dir = served
    assert url.startswith("http://127.0.0.1:")
    uploads = Path(os.environ["GRADIO_TEMP_DIR"])  # outside the run folder: file URLs name none of its path
    assert uploads.name.startswith("instructsd-demo-") and not uploads.is_relative_to(run_dir)


def test_handler_turns_bad_uploads_into_messages(served, tmp_path, tiny_model):
    from instructsd.app.demo import DemoLimits, make_edit_fn

    _, _, run_dir = served
    edit = make_edit_fn(None, tiny_model, run_dir, DemoLimits(max_pixels=1000))  # never reaches the model
    big = tmp_path / "big.png"
    photo(0, (80, 60)).save(big)
    with pytest.raises(gr.Error, match="too large.*MP limit"):
        edit(str(big), "x", 2, 1.5, 7.0, "euler_ancestral", 0, 1, False)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty.png.*0 bytes"):
        edit(str(empty), "x", 2, 1.5, 7.0, "euler_ancestral", 0, 1, False)
    with pytest.raises(gr.Error, match="instruction"):
        edit(str(big), "  ", 2, 1.5, 7.0, "euler_ancestral", 0, 1, False)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
def test_upload_instruct_submit_in_a_real_browser(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    _, url, run_dir = served
    source = tmp_path / "upload.jpg"  # a phone-style JPEG: stored 48×40, displayed rotated 90°
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(3, (48, 40)).save(source, exif=exif)
    too_big = tmp_path / "too_big.png"  # ~1.9 MB of noise; the limit here is 1 MB
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(too_big)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(source), timeout=60_000)
            page.get_by_label("Instruction").fill("Cartoonize the image.")
            page.locator("#edit-button").click()
            result = page.locator("#gallery img").first
            result.wait_for(state="visible", timeout=90_000)
            size = page.wait_for_function(
                "() => { const im = document.querySelector('#gallery img');"
                " return im && im.complete && im.naturalWidth > 0 && [im.naturalWidth, im.naturalHeight]; }",
                timeout=30_000,
            ).json_value()
            # An upload over the byte limit is refused with a message, before reaching the handler.
            page.reload()
            page.locator("input[type=file]").first.set_input_files(str(too_big))
            page.get_by_text("exceed the maximum allowed size").wait_for(timeout=30_000)
        finally:
            browser.close()
    assert size == [40, 48]  # upright: the upload went through our loader, EXIF applied
    (saved,) = (run_dir / "outputs").glob("*.png")
    edited = Image.open(saved)
    assert edited.size == (40, 48)
    assert edited.text["instructsd:instruction"] == "Cartoonize the image."
    assert any(Path(os.environ["GRADIO_TEMP_DIR"]).rglob("upload.jpg"))  # the upload stayed in the private folder
