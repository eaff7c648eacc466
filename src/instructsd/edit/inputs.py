"""Finding and opening the images a user asks to edit: files, folders, globs; size limits.

Decoding goes through the shared loader (:func:`instructsd.data.images.load_image`: EXIF
rotation, alpha, palettes, CMYK, 16-bit, first frame of animations). This module adds the
checks the loader cannot make cheaply: the pixel count and the smallest side, read from the
header *before* anything is decoded, so a 100,000 × 100,000 PNG (a "decompression bomb") is
refused at once, and a 1 × 1 image is refused instead of coming back as an invented 8 × 8.

When the caller will downscale anyway (``max_side``), a JPEG is decoded at 1/2, 1/4 or 1/8
scale by the decoder itself (Pillow's ``draft``: DCT scaling), so a 50 MP photo never exists
at full size in memory. Other formats have no reduced decode and are decoded in full, which
``max_pixels`` bounds.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

from PIL import Image, ImageOps

from instructsd.data.images import IMAGE_EXTENSIONS, find_images, load_image, to_rgb
from instructsd.errors import InstructSDError

DEFAULT_MAX_PIXELS = 50_000_000  # ~ 8660 × 5770; a 48 MP phone photo still fits
MIN_SIDE = 8  # one latent pixel of Stable Diffusion's autoencoder; anything smaller would be invented


def collect_inputs(specs: list[str] | tuple[str, ...]) -> list[Path]:
    """Expand each spec — an image file, a folder (searched recursively) or a glob — into files.

    The order is the specs' order, each expanded sorted; duplicates are dropped.

    Raises:
        InstructSDError: a spec matches nothing.
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found += find_images(path)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
            if not matches:
                raise InstructSDError(f"no image files match '{spec}'; check the pattern")
            found += matches
        else:
            raise InstructSDError(f"'{spec}' does not exist; pass an image file, a folder or a glob")
    unique = list(dict.fromkeys(found))
    return unique


def check_pixels(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, or a side under
    :data:`MIN_SIDE` (nothing decoded).

    Files Pillow cannot even identify pass here; :func:`load_image` then names their problem.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as err:
        raise InstructSDError(f"cannot read image '{path}': too large to decode safely ({err}); downscale it first") from err
    except Exception:  # noqa: BLE001 - unreadable files get load_image's precise message
        return
    if w * h > max_pixels:
        raise InstructSDError(
            f"image '{path}' is too large: {w}×{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP limit; "
            "downscale it first or raise --max-pixels"
        )
    if min(w, h) < MIN_SIDE:
        raise InstructSDError(
            f"image '{path}' is too small to edit: {w}×{h}; each side needs at least {MIN_SIDE} pixels"
        )


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Check the header, then load ``path`` as upright 8-bit RGB (the shared loader).

    With ``max_side`` (the caller downscales to that longer side), a JPEG is decoded at the
    smallest DCT scale that still covers it; the result may be larger than ``max_side``,
    never smaller.
    """
    check_pixels(path, max_pixels)
    if max_side is not None:
        reduced = _draft_jpeg(path, max_side)
        if reduced is not None:
            return reduced
    return load_image(path)


def _draft_jpeg(path: str | Path, max_side: int) -> Image.Image | None:
    """A JPEG decoded at 1/2, 1/4 or 1/8 scale when that still covers ``max_side``; else None."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            scale = max_side / max(w, h)
            if im.format != "JPEG" or scale > 0.5:
                return None
            # draft() picks the smallest scale whose size is still >= the one asked for.
            im.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
            return to_rgb(ImageOps.exif_transpose(im))
    except Exception:  # noqa: BLE001 - a broken file gets load_image's precise message instead
        return None
