"""The served demo is private and honest (issue 17, defects 5-6), tested over HTTP and in headless
Chromium against the running app, not by calling the handler."""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from instructsd.cli import run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

gr = pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'instructsd[demo]'")
httpx = pytest.importorskip("httpx")

SERVED_NAME = re.compile(r"/([0-9a-f]{32})/edit-seed(\d+)\.png$")


def serve(model, run_dir, **limits):
    from instructsd.app.demo import DemoLimits, build_demo, launch
    from instructsd.edit.editor import load_pipeline

    limits = DemoLimits(max_upload_mb=1, max_pixels=200_000, max_side=64, max_steps=3, **limits)
    demo = build_demo(load_pipeline(model, device="cpu"), model, run_dir, limits)
    _, url, _ = launch(demo, run_dir, limits, block=False)
    return demo, url


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo-private")
    demo, url = serve(tiny_model, run_dir)
    yield url, run_dir
    demo.close()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def call_edit(url: str, data: bytes, name: str = "in.png", seed: int = 0) -> str:
    """Upload and edit through the app's HTTP API, as a browser or script would; the raw SSE answer."""
    with httpx.Client(base_url=url, timeout=120) as client:
        (path,) = client.post("gradio_api/upload", files=[("files", (name, data, "image/png"))]).json()
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "Cartoonize the image.", 2, 1.5,
                            7.0, "auto", seed, 1, True]}
        event = client.post("gradio_api/call/edit", json=payload).json()["event_id"]
        return client.get(f"gradio_api/call/edit/{event}").text


def served_urls(answer: str) -> list[str]:
    assert "event: complete" in answer, answer
    return sorted(set(re.findall(r'"url": "([^"]+)"', answer)))


def test_answers_name_no_server_path_and_the_record_is_not_served(served, tiny_model):
    url, run_dir = served
    answer = call_edit(url, png_bytes(photo(1, (48, 40))), seed=4)
    for secret in (str(run_dir), str(Path(tiny_model).parent), f"-{os.getpid()}-"):
        assert secret not in answer
    (link,) = served_urls(answer)
    assert SERVED_NAME.search(link), link  # a random per-request folder, nothing derived from time or pid
    with httpx.Client(timeout=60) as client:
        got = client.get(link)
        assert got.status_code == 200
        edited = Image.open(io.BytesIO(got.content))
        assert edited.text["instructsd:seed"] == "4"
        assert edited.text["instructsd:model"] == Path(tiny_model).name  # the folder's name, not its path
        # The server-side record exists but is never served, even to someone who knows its path.
        records = sorted((run_dir / "outputs").glob("*.png"))
        assert records
        assert client.get(f"{url}gradio_api/file={records[-1]}").status_code == 403
        page = client.get(url).text + client.get(f"{url}config").text
        assert str(run_dir) not in page and str(Path(tiny_model).parent) not in page


def test_requests_at_the_same_moment_never_collide(served):
    url, run_dir = served
    before = set((run_dir / "outputs").glob("*.png"))
    source = png_bytes(photo(2, (48, 40)))
    seeds = list(range(10, 16))
    answers: dict[int, str] = {}
    start = threading.Barrier(len(seeds))

    def one(seed):
        start.wait()
        answers[seed] = call_edit(url, source, seed=seed)

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    links = {seed: served_urls(answer) for seed, answer in answers.items()}
    assert sorted(links) == seeds
    assert len({link for (link,) in links.values()}) == len(seeds)
    with httpx.Client(timeout=60) as client:
        for seed, (link,) in links.items():  # every visitor gets their own edit back
            assert Image.open(io.BytesIO(client.get(link).content)).text["instructsd:seed"] == str(seed)
    assert len(set((run_dir / "outputs").glob("*.png")) - before) == len(seeds)  # none overwritten


def test_stored_files_are_kept_within_the_budget(tiny_model, tmp_path):
    from instructsd.app.demo import upload_dir

    run_dir = tmp_path / "demo"
    demo, url = serve(tiny_model, run_dir, max_stored_files=6)
    try:
        first = call_edit(url, png_bytes(photo(3, (48, 40))), name="first.png")
        (first_link,) = served_urls(first)
        for k in range(4):
            call_edit(url, png_bytes(photo(4 + k, (48, 40))), name=f"next{k}.png")
        stored = [p for folder in (upload_dir(), run_dir / "outputs") for p in folder.rglob("*") if p.is_file()]
        # Pruned at the start of each request: the budget, plus what the last request added
        # (its upload, the served copy, the recorded PNG and its sidecar).
        assert len(stored) <= 6 + 4
        assert not any(p.name == "first.png" for p in stored)
        with httpx.Client(timeout=60) as client:
            assert client.get(first_link).status_code in (403, 404)
    finally:
        demo.close()


def test_prune_by_age_count_and_bytes(tmp_path):
    from instructsd.app.demo import DemoLimits, prune_stored

    folder = tmp_path / "uploads"
    now = time.time()
    for k in range(8):
        path = folder / f"h{k}" / f"f{k}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - 100 * (8 - k), now - 100 * (8 - k)))  # f0 oldest
    old = folder / "stale.bin"
    old.write_bytes(b"x")
    os.utime(old, (now - 7200, now - 7200))
    assert prune_stored([folder], DemoLimits(max_stored_files=100, max_stored_age_s=3600)) == 1
    assert not old.exists()
    assert prune_stored([folder], DemoLimits(max_stored_files=5)) == 3
    assert sorted(p.name for p in folder.rglob("*.bin")) == ["f3.bin", "f4.bin", "f5.bin", "f6.bin", "f7.bin"]
    assert sorted(p.name for p in folder.iterdir()) == ["h3", "h4", "h5", "h6", "h7"]  # emptied folders go too
    assert prune_stored([folder], DemoLimits(max_stored_mb=2500 / 1024**2)) == 3
    assert sorted(p.name for p in folder.rglob("*.bin")) == ["f6.bin", "f7.bin"]


def test_exposed_host_prints_a_warning(tmp_path, capsys):
    from instructsd.app.demo import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    assert "every machine" in exposure_warning("192.168.1.20")
    # Through the CLI, before anything loads (the missing model then stops it).
    assert run(["demo", "--model", str(tmp_path / "no-model"), "--host", "0.0.0.0", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 exposes the demo" in err and "no-model" in err


def huge_png_header(width=100_000, height=100_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
def test_every_bad_upload_gets_the_handlers_message_in_a_real_browser(served, tmp_path):
    """Gradio used to open the upload itself and answer with its generic error."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    url, run_dir = served
    smooth = photo(5, (600, 400))  # 0.24 MP: over this server's 0.2 MP limit, well under its 1 MB
    good = png_bytes(photo(6, (48, 40)))
    cases = {
        "empty.png": (b"", "empty.png': file is empty (0 bytes)"),
        "notes.png": (b"shopping list: eggs, milk\n" * 20, "notes.png': not a recognised image format"),
        "notes.txt": (b"just text\n", "notes.txt': not a recognised image format"),
        "cut.png": (good[: len(good) // 2], "cut.png': file is truncated or corrupt"),
        "wide.png": (png_bytes(smooth), "over the 0.2 MP limit"),
        "bomb.png": (huge_png_header(), "bomb.png': too large to decode safely"),
        "dot.png": (png_bytes(Image.new("RGB", (1, 1))), "too small to edit: 1×1"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            for name, (_, message) in cases.items():
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.locator("input[type=file]").first.set_input_files(str(tmp_path / name), timeout=60_000)
                page.get_by_label("Instruction").fill("Cartoonize the image.")
                page.locator("#edit-button").click()
                page.get_by_text(message, exact=False).first.wait_for(timeout=60_000)
                text = page.inner_text("body")
                assert "upstream" not in text.lower() and str(run_dir) not in text, (name, text[-500:])
        finally:
            browser.close()
