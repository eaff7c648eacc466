"""Reading user images: one loader that turns any common file into an upright 8-bit RGB image.

Everything downstream (dataset building, editing, evaluation) assumes ``PIL.Image`` in mode
``RGB``, so all the format quirks -- EXIF rotation, alpha, palettes, CMYK, 16-bit -- are
handled here once, and every unreadable file becomes an :class:`InstructSDError` that names it.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from instructsd.errors import InstructSDError

# Lower-case suffixes that `find_images` picks up; anything Pillow decodes could be added.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

DEFAULT_MAX_PIXELS = 50_000_000
"""Builders skip larger source images (~ 8660 x 5770: a 48 MP phone photo still fits), checked
from the header before anything is decoded, so a small file declaring 169 MP costs nothing."""

# What decoding a stored image can raise (datasets' Image feature opens and loads cells with Pillow):
# malformed data in its many forms, and a decompression bomb -- an error above twice Pillow's
# MAX_IMAGE_PIXELS, and a warning above it, made an error by :func:`refuse_bombs` (issue 17:
# a bomb row crashed `train`, a corrupt row crashed `eval`).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError, Image.DecompressionBombWarning,
)


@contextlib.contextmanager
def refuse_bombs() -> Iterator[None]:
    """Within: an image over Pillow's ``MAX_IMAGE_PIXELS`` raises instead of being decoded anyway
    (~0.3 GB per image). The warning filter is process-wide, so call it from one thread only."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_reason(err: BaseException) -> str:
    """A decode failure as one short line for a skipped-rows record."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:300]


_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_REPLACE_HINT = "remove it or replace it with a valid image"


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as a fully loaded, upright RGB image.

    With ``max_pixels``, an image whose header declares more pixels is refused before decoding.

    - EXIF orientation is applied, so phone photos come out the way they were shot.
    - Animated images (GIF, WebP, multi-page TIFF) give their first frame.
    - Transparency is composited over white (a black background would invent dark edges).
    - 16-bit images are scaled to 8 bits (``v / 257``), not clipped.

    Raises:
        InstructSDError: the file is missing, empty, not an image, corrupt or in a mode
            that cannot be converted; the message names the file and says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise InstructSDError(f"cannot read image '{path}': file not found; check the path")
    if not path.is_file():
        raise InstructSDError(f"cannot read image '{path}': it is a directory, not an image file")
    if path.stat().st_size == 0:
        raise InstructSDError(f"cannot read image '{path}': file is empty (0 bytes); {_REPLACE_HINT}")
    try:
        with Image.open(path) as im:
            check_pixels(im, max_pixels, path)
            im.seek(0)  # first frame of animations; a no-op for still images
            # exif_transpose returns a new, loaded image, so the file can close after this block.
            upright = ImageOps.exif_transpose(im)
    except InstructSDError:
        raise
    except Image.DecompressionBombError as err:
        raise InstructSDError(
            f"cannot read image '{path}': it is too large to decode safely ({err}); "
            "downscale it first"
        ) from err
    except Image.UnidentifiedImageError as err:
        raise InstructSDError(
            f"cannot read image '{path}': not a recognised image format; {_REPLACE_HINT}"
        ) from err
    # Pillow's decoders raise many types (OSError, ValueError, SyntaxError, struct.error, ...)
    # for malformed data; to a user they all mean the same thing: this file is broken.
    except Exception as err:  # noqa: BLE001
        raise InstructSDError(
            f"cannot read image '{path}': file is truncated or corrupt ({err}); {_REPLACE_HINT}"
        ) from err
    try:
        return to_rgb(upright)
    except ValueError as err:
        raise InstructSDError(
            f"cannot read image '{path}': unsupported image mode {upright.mode!r}; "
            "convert it to an 8-bit RGB PNG or JPEG"
        ) from err


def check_pixels(im: Image.Image, max_pixels: int | None, name: object = "image") -> None:
    """Refuse ``im`` (opened, perhaps not yet decoded) when it has more than ``max_pixels`` pixels."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise InstructSDError(
            f"image '{name}' is {w}x{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP limit "
            "(max_pixels); downscale it or raise max_pixels"
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an image in any Pillow mode to 8-bit RGB (alpha over white, 16-bit scaled down)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _high_bit_depth_to_l(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # returns a copy when the image already is RGB


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """Map a single-channel 16/32-bit image to 8-bit ``L``.

    Pillow's own ``convert("L")`` clips these at 255, which turns most 16-bit photos white.
    ``I;16*`` is known to be 16-bit. ``I``/``F`` carry no bit depth, so it is guessed from
    the largest value: float images up to 1.0 are taken as [0, 1], values up to 255 are
    kept, values up to 65535 are treated as 16-bit, anything larger is scaled by its maximum.
    """
    a = np.asarray(im, dtype=np.float64)
    peak = float(a.max()) if a.size else 0.0
    if im.mode.startswith("I;16"):
        scale = 257.0  # 65535 / 255
    elif im.mode == "F" and peak <= 1.0:
        scale = 1.0 / 255.0
    else:
        scale = 1.0 if peak <= 255 else 257.0 if peak <= 65535 else peak / 255.0
    out = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def find_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted by path.

    A file counts when its suffix (any case) is in :data:`IMAGE_EXTENSIONS`. Hidden files and
    folders are skipped: they are mostly editor or OS debris such as macOS ``._photo.jpg``
    resource forks, which carry an image suffix but are not images.

    Raises:
        InstructSDError: ``folder`` does not exist, is not a folder, or holds no images.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InstructSDError(f"image folder '{folder}' does not exist; check the path")
    if not folder.is_dir():
        raise InstructSDError(f"'{folder}' is a file, not a folder of images; pass its folder")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not found:
        exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise InstructSDError(
            f"no images found in '{folder}' (looked recursively for: {exts}); "
            "point to a folder that contains photos"
        )
    return found
