"""Default source photos: the public-domain test images that ship inside scikit-image's wheel.

They let ``instructsd data build`` make a small dataset with no user photos and no network.
The files are read straight from ``skimage/data/`` -- never through ``skimage.data.<name>()``,
whose fetchers may try to download through pooch.

Chosen (15): natural photos, colour first, then grayscale photos of real textures and scenes.

- colour: astronaut, chelsea (cat), coffee, hubble_deep_field, ihc (stained tissue),
  motorcycle_left, retina, rocket
- grayscale (converted to RGB): brick, camera, coins, grass, gravel, moon, page

Left out on purpose:

- ``motorcycle_right``: the other half of a stereo pair with ``motorcycle_left``; keeping
  both would put a near-duplicate of a validation photo in train.
- ``clock_motion``: already motion-blurred, a poor clean target for denoise/deblur.
- binary or synthetic drawings: horse, chessboard_*, logo, text, phantom, color, cell.
- too small: microaneurysms (102 px), multipage*.tif, the tiny GIF, lfw_subset.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from instructsd.data.images import load_image
from instructsd.errors import InstructSDError

# File names inside skimage/data/, grouped as in the module docstring.
SAMPLE_FILES: tuple[str, ...] = (
    # colour photos
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    # grayscale photos
    "brick.png",
    "camera.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "page.png",
)


def skimage_data_dir() -> Path:
    """The folder of bundled images inside the installed scikit-image package."""
    try:
        # data_dir is a plain path constant; importing it downloads nothing.
        from skimage.data import data_dir
    except ImportError as err:
        raise InstructSDError(
            "the built-in sample photos come from scikit-image, which is not installed; "
            "run `pip install scikit-image` or pass your own image folder"
        ) from err
    return Path(data_dir)


def sample_images() -> list[tuple[str, Image.Image]]:
    """The bundled sample photos as ``(name, RGB image)``, sorted by name.

    ``name`` is the file stem (``"astronaut"``). Files missing from this scikit-image build
    are skipped, so the set can shrink on an unusual install; the dataset card built from
    them records the names actually used.

    Raises:
        InstructSDError: none of :data:`SAMPLE_FILES` exist in the scikit-image data folder.
    """
    folder = skimage_data_dir()
    paths = [folder / name for name in SAMPLE_FILES if (folder / name).is_file()]
    if not paths:
        raise InstructSDError(
            f"no sample photos found in scikit-image's data folder '{folder}'; "
            "reinstall scikit-image or pass your own image folder"
        )
    return [(p.stem, load_image(p)) for p in sorted(paths, key=lambda p: p.stem)]
