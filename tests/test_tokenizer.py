"""The tiny models' tokenizer is a real CLIP BPE tokenizer that round-trips text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(Path(tiny_model) / "tokenizer")


@pytest.mark.parametrize("text", ["Cartoonize the image", "deblur the image and denoise it",
                                  "enhance the low light photo of 3 cats", "make it look like van gogh painted it"])
def test_round_trip(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(text.lower().split())


def test_known_words_are_single_tokens_and_any_text_encodes(tokenizer):
    assert tokenizer.tokenize("denoise the image") == ["denoise</w>", "the</w>", "image</w>"]
    ids = tokenizer("Zürich 東京 ☃").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # byte fallback, never unknown


def test_pads_to_clip_context_and_ships_classic_files(tokenizer, tiny_model):
    assert tokenizer.model_max_length == 77
    ids = tokenizer("denoise", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77
    folder = Path(tiny_model) / "tokenizer"
    vocab = json.loads((folder / "vocab.json").read_text())
    assert len(vocab) == len(tokenizer)
    assert (folder / "merges.txt").read_text().startswith("#version")
