"""A real byte-level BPE CLIP tokenizer, trained here from text so nothing is downloaded.

Stable Diffusion's tokenizer is CLIP's byte-level BPE: text is NFC-normalised, lower-cased,
split into words, bytes mapped to printable characters, and the last symbol of every word
carries the suffix ``</w>``. We train merges with the same pre-processing using
``tokenizers`` and write ``vocab.json`` + ``merges.txt`` in CLIP's layout, so the stock
``CLIPTokenizer.from_pretrained`` loads it exactly like a real checkpoint's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # CLIP's context length; the SD pipelines pad every prompt to it

# The same word split as CLIP's tokenizer (see transformers' CLIPTokenizer).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# General image-editing vocabulary so instructions outside the built-in tasks still
# tokenize into whole-ish words rather than single bytes.
EDITING_CORPUS = """
make it look like a painting. turn the sky into a sunset. add snow to the scene.
remove the rain from the photo. sharpen the blurry picture. brighten the dark image.
denoise the noisy photograph. deblur the image and denoise it. enhance the low-light image.
cartoonize the image. generate a cartoonized version of the image. dehaze the hazy picture.
remove jpeg compression artifacts. convert this photo to black and white. make the colors warmer.
replace the background with a beach. change the season to winter. make it night time.
restore the old photo. increase the contrast. reduce the noise. fix the exposure.
please apply a watercolor style to this picture. give the image an anime look.
"""


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024) -> CLIPTokenizer:
    """Train a CLIP-style BPE tokenizer on ``texts`` and save it to ``out_dir``.

    Returns the tokenizer loaded back through ``CLIPTokenizer.from_pretrained`` so the
    caller holds exactly what users of the saved folder will get.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=byte_alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts) + [EDITING_CORPUS], trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]

    # CLIP's vocabulary order: every byte symbol, every byte symbol ending a word, the
    # merges in order, then the two specials. Having all 512 base symbols means any text,
    # in any script, encodes without an unknown token.
    vocab: dict[str, int] = {}
    for symbol in sorted(byte_alphabet, key=lambda s: ord(s)):
        vocab.setdefault(symbol, len(vocab))
    for symbol in sorted(byte_alphabet, key=lambda s: ord(s)):
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))

    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(out_dir, model_max_length=MODEL_MAX_LENGTH)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def write_vocab_files(tokenizer: CLIPTokenizer, folder: str | Path) -> None:
    """Also write ``vocab.json`` and ``merges.txt`` beside ``tokenizer.json``.

    transformers 5 saves only ``tokenizer.json``; older releases' slow ``CLIPTokenizer``
    (what diffusers' model_index asks for) needs the two classic files.
    """
    folder = Path(folder)
    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    (folder / "vocab.json").write_text(json.dumps(state["vocab"], ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
