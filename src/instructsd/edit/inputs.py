"""Finding and opening the images a user asks to edit: files, folders, globs; size limits.

Decoding goes through the shared loader (:func:`instructsd.data.images.load_image`: EXIF
rotation, alpha, palettes, CMYK, 16-bit, first frame of animations). This module adds the
one check the loader cannot make cheaply: the pixel count, read from the header *before*
anything is decoded, so a 100,000 × 100,000 PNG (a "decompression bomb") is refused at once.
"""

from __future__ import annotations

import glob
from pathlib import Path

from PIL import Image

from instructsd.data.images import IMAGE_EXTENSIONS, find_images, load_image
from instructsd.errors import InstructSDError

DEFAULT_MAX_PIXELS = 50_000_000  # ~ 8660 × 5770; a 48 MP phone photo still fits


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
    """Refuse an image whose header declares more than ``max_pixels`` pixels (nothing decoded).

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


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Check the pixel count, then load ``path`` as upright 8-bit RGB (the shared loader)."""
    check_pixels(path, max_pixels)
    return load_image(path)
