"""Text-to-image rows in an edit dataset (issue 18): an image and its caption, with no input image.

Why it means something in InstructPix2Pix: the model is trained with the input-image latents
zeroed for a share of samples (conditioning dropout, Brooks et al. 2023, sec. 3.2.1), which is what
classifier-free guidance over the image needs — ε_θ(z_t, ∅, c_T) is "generate from the text alone".
A captioned image is exactly such a sample with a real caption: target = the image, image
conditioning dropped, text = the caption. Mixing them in keeps the base's generative prior (the
unconditional-image branch that image guidance extrapolates from) anchored to real text-to-image
data instead of to the edit pairs' targets only.

A mixture component ``t2i: {...}`` makes such rows: the image (square-cropped like every other row)
as ``edited_image``, a black ``input_image`` of the same size (a placeholder: the trainer zeroes the
input latents of every row whose task is :data:`T2I_TASK`, whatever the input holds), the caption as
``edit_prompt`` and ``task: t2i``. Sources:

- ``t2i: {folder: DIR}``: every image under DIR, its caption in the sidecar ``NAME.txt`` beside it;
- ``t2i: {dataset: ID_OR_PATH, image: COLUMN, caption: COLUMN, split, limit, streaming}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from instructsd.data.sources import FolderSource, HubSource
from instructsd.errors import InstructSDError

T2I_TASK = "t2i"
"""The task (``task`` column) of text-to-image rows; the trainer trains them without the input image."""

_KEYS = {"folder", "dataset", "image", "caption", "split", "limit", "streaming", "config"}


def check_t2i_source(spec, where: str) -> None:
    """A component's ``t2i`` mapping: ``{folder: DIR}`` or ``{dataset: ..., caption: COLUMN, ...}``."""
    if not isinstance(spec, Mapping) or len({"folder", "dataset"} & set(spec)) != 1:
        raise InstructSDError(f"{where}: t2i must be {{folder: DIR}} (captions in NAME.txt beside each image) or "
                              "{dataset: ID_OR_PATH, image: COLUMN, caption: COLUMN}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise InstructSDError(f"{where}: t2i has unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if "folder" in spec and set(spec) != {"folder"}:
        raise InstructSDError(f"{where}: t2i {{folder: DIR}} takes no other key (captions come from NAME.txt files)")
    if "dataset" in spec and not spec.get("caption"):
        raise InstructSDError(f"{where}: t2i {{dataset: ...}} needs 'caption': the column holding each image's caption")


def open_t2i_source(spec: Mapping, max_pixels: int):
    """The captioned source a ``t2i`` mapping names; its ``load_many`` yields ``(k, (image, caption))``."""
    if "folder" in spec:
        return CaptionedFolder(spec["folder"], max_pixels=max_pixels)
    options = {k: v for k, v in spec.items() if k not in ("image", "caption")}
    return CaptionedDataset(**options, column=spec.get("image"), caption=spec["caption"], max_pixels=max_pixels)


class CaptionedFolder(FolderSource):
    """Images under a folder, each captioned by the text file of the same name (``cat.png`` + ``cat.txt``)."""

    def describe(self) -> str:
        return f"captioned folder {self.folder} ({len(self.names)} images)"

    def load(self, k: int) -> tuple[Image.Image, str]:
        caption = Path(self.paths[k]).with_suffix(".txt")
        if not caption.is_file():
            raise InstructSDError(f"no caption for {self.paths[k]}: write it to {caption}")
        return super().load(k), caption.read_text(encoding="utf-8").strip()


@dataclass
class CaptionedDataset(HubSource):
    """A ``datasets`` dataset's image column with its caption column."""

    caption: str = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        features = self._open().features or {}
        if features and self.caption not in features:
            raise InstructSDError(f"dataset {self.dataset!r} has no caption column {self.caption!r}; "
                                  f"it has: {', '.join(features)}")

    def _item(self, row: dict) -> tuple[Image.Image, str]:
        return self._to_image(row[self.column]), str(row[self.caption] or "").strip()
