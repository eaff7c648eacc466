"""Shared fixtures: tiny models and datasets built once per test session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it: no spinning threads under load

import numpy as np
import pytest
from PIL import Image

from instructsd.models.tiny import TinySpec, init_tiny

# Smaller than the quickstart's model so every test that trains stays within seconds.
TEST_SPEC = TinySpec(unet_channels=(16, 32), text_dim=32, vae_channels=(16, 32), vocab_size=700, sample_size=32)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """An 8-channel InstructPix2Pix folder with random weights."""
    return str(init_tiny(tmp_path_factory.mktemp("models") / "tiny-ip2p", in_channels=8, spec=TEST_SPEC))


@pytest.fixture(scope="session")
def tiny_sd_model(tmp_path_factory) -> str:
    """A 4-channel Stable Diffusion folder with random weights."""
    return str(init_tiny(tmp_path_factory.mktemp("models") / "tiny-sd", in_channels=4, spec=TEST_SPEC))


@pytest.fixture(scope="session")
def ip2p_hub_model(tmp_path_factory) -> str:
    """A folder laid out exactly like timbrooks/instruct-pix2pix (tiny widths, random weights)."""
    from instructsd.models.hub_layout import write_hub_model

    return str(write_hub_model(tmp_path_factory.mktemp("models") / "hub-ip2p", "instruct-pix2pix"))


@pytest.fixture(scope="session")
def sd15_hub_model(tmp_path_factory) -> str:
    """A folder laid out exactly like runwayml/stable-diffusion-v1-5 (tiny widths, random weights)."""
    from instructsd.models.hub_layout import write_hub_model

    return str(write_hub_model(tmp_path_factory.mktemp("models") / "hub-sd15", "sd15"))


def photo(seed: int, size=(80, 60)) -> Image.Image:
    """A smooth random colour image with some edges, like a small photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(xx * rng.uniform(2, 8) + c) * np.cos(yy * rng.uniform(2, 8)) for c in range(3)], -1)
    base[h // 3 : h // 2, w // 4 : w // 2] += 0.8
    return Image.fromarray(np.clip((base + 1) * 110, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(4):
        photo(i).save(folder / f"photo{i}.png")
    return folder


def _pairs(root, photos: int, size: int, val_fraction: float):
    from instructsd.data.build import build_dataset

    build_dataset([(f"p{i}", photo(i, (40, 32))) for i in range(photos)], root, size=size, crops_per_image=1,
                  val_fraction=val_fraction, progress=False)
    return root


@pytest.fixture(scope="session")
def pairs_32px(tmp_path_factory):
    """3 photos, one 32 px crop each (one photo held out): for the hub-layout (factor-8) models. Read-only."""
    return _pairs(tmp_path_factory.mktemp("pairs32") / "pairs", 3, 32, 0.34)


@pytest.fixture(scope="session")
def pairs_24px(tmp_path_factory):
    """4 photos, one 24 px crop each (one photo held out): for the tiny models. Read-only."""
    return _pairs(tmp_path_factory.mktemp("pairs24") / "pairs", 4, 24, 0.25)


@pytest.fixture
def quick_streams(monkeypatch):
    """For tests that stream parquet: no shutdown pause, one intra-op thread.

    datasets waits 5 s whenever a parquet stream is closed, letting pyarrow's reader threads stop
    (apache/arrow#45214): once an epoch in a long run, but most of a streaming test's time. A tiny
    UNet gains nothing from intra-op threads, which only spin against datasets' reader threads (and
    other jobs) on a small shared CPU.
    """
    import datasets
    import torch

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
