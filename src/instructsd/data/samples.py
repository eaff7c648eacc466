"""Default source photos: public test images that ship inside Python packages' wheels.

They let ``instructsd data build`` make a small dataset with no user photos and no network.
The files are read straight from the packages' data folders -- never through
``skimage.data.<name>()``, whose fetchers may try to download through pooch, and without
importing scikit-learn.

Two sets (``sample_images(photo_set)``):

``skimage-15`` (the first tiny base's data, kept so its card can be rebuilt)
    natural photos, colour first, then grayscale photos of real textures and scenes:

    - colour: astronaut, chelsea (cat), coffee, hubble_deep_field, ihc (stained tissue),
      motorcycle_left, retina, rocket
    - grayscale (converted to RGB): brick, camera, coins, grass, gravel, moon, page

``extended`` (the default; issue 15 wants ≥ 4 held-out *colour* photos for colour operations)
    the 15 above, plus ``motorcycle_right`` (the other half of the stereo pair: one *group*,
    ``motorcycle``, with the left half, so the two never straddle the split) and, when
    scikit-learn is installed, its two colour photos ``china`` and ``flower`` (CC BY 2.0,
    Flickr users danielbuechele and vultilion, as scikit-learn's ``datasets/images/README.txt``
    states; a dataset card built from them says so). Grayscale photos are flagged
    (:data:`GRAYSCALE`): the builder skips them for operations that only change colour.

Left out on purpose:

- ``clock_motion``: already motion-blurred, a poor clean target for denoise/deblur.
- binary or synthetic drawings: horse, chessboard_*, logo, text, phantom, color, cell.
- too small: microaneurysms (102 px), multipage*.tif, the tiny GIF, lfw_subset.
"""

from __future__ import annotations

import importlib.util
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
GRAYSCALE = frozenset({"brick", "camera", "coins", "grass", "gravel", "moon", "page"})
"""Names of the grayscale photos (stored as RGB): colour operations skip them."""
SKLEARN_FILES: tuple[str, ...] = ("china.jpg", "flower.jpg")
"""Colour photos inside scikit-learn's wheel (``sklearn/datasets/images``), CC BY 2.0."""
SKLEARN_LICENSE = ("CC BY 2.0: china.jpg by Flickr user danielbuechele, flower.jpg by Flickr user vultilion "
                   "(scikit-learn's datasets/images/README.txt)")
GROUPS = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}
"""Photos that are one scene: the split keeps a group together."""
PHOTO_SETS = ("extended", "skimage-15")
DEFAULT_PHOTO_SET = "extended"


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


def _sklearn_images_dir() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return folder if folder.is_dir() else None


def sample_paths(photo_set: str = DEFAULT_PHOTO_SET) -> list[Path]:
    """The files of ``photo_set`` that exist on this install (see the module docstring)."""
    if photo_set not in PHOTO_SETS:
        raise InstructSDError(f"unknown photo set {photo_set!r}; choose from: {', '.join(PHOTO_SETS)}")
    folder = skimage_data_dir()
    paths = [folder / name for name in SAMPLE_FILES]
    if photo_set == "extended":
        paths.append(folder / "motorcycle_right.png")
        extra = _sklearn_images_dir()
        paths += [extra / name for name in SKLEARN_FILES] if extra else []
    return [p for p in paths if p.is_file()]


def sample_images(photo_set: str = DEFAULT_PHOTO_SET) -> list[tuple[str, Image.Image]]:
    """The bundled sample photos of ``photo_set`` as ``(name, RGB image)``, sorted by name.

    ``name`` is the file stem (``"astronaut"``). Files missing from this install are skipped
    (scikit-learn's two photos need scikit-learn), so the set can shrink on an unusual install;
    the dataset card built from them records the names actually used, and :data:`GROUPS` says
    which photos are one scene.

    Raises:
        InstructSDError: none of the files exist.
    """
    paths = sample_paths(photo_set)
    if not paths:
        raise InstructSDError(
            f"no sample photos found in scikit-image's data folder '{skimage_data_dir()}'; "
            "reinstall scikit-image or pass your own image folder"
        )
    return [(p.stem, load_image(p)) for p in sorted(paths, key=lambda p: p.stem)]


def colour_names(names) -> list[str]:
    """The names among ``names`` that are colour photos."""
    return [n for n in names if n not in GRAYSCALE]
