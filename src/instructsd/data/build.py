"""``build_dataset``: photos + task names -> a :class:`~instructsd.data.mixture.Mixture` -> the one builder.

The quick way to make an instruction dataset, and an adapter over the mixture builder
(:func:`instructsd.data.write.build_mixture`, issue 13), so it has the same schema, card,
skip records, pixel limit, resume and ``--shard``. It keeps the older builder's randomness
(``seed_scheme: legacy``, described in :mod:`instructsd.data.rows`) and its split by photo
(``split: permutation``): every dataset it made -- the shipped tiny base's training data and
its check subset, whose card ``tests/test_pretrain.py`` reproduces -- comes out with the same
pixels, prompts, sources and row order, and the quickstart holds out the same photos.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
from PIL import Image

from instructsd.data.images import DEFAULT_MAX_PIXELS, find_images
from instructsd.data.mixture import parse_mixture
from instructsd.data.sources import MemorySource
from instructsd.data.tasks import get_task, is_photo_task
from instructsd.data.write import build_mixture
from instructsd.errors import InstructSDError

DEFAULT_TASKS = ("denoise", "lowlight", "cartoonize")


def build_dataset(
    images: Sequence[tuple[str, Image.Image]] | str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    size: int = 64,
    crops_per_image: int = 4,
    val_fraction: float = 0.15,
    seed: int = 0,
    min_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    overwrite: bool = False,
    num_proc: int = 1,
    shard: tuple[int, int] = (0, 1),
    source_licenses: Sequence[Mapping[str, str]] | None = None,
    command: str | None = None,
    groups: Mapping[str, str] | None = None,
    holdout: Sequence[str] = (),
    inverse: float = 0.0,
    engine: str = "local",
    address: str | None = None,
) -> datasets.DatasetDict | None:
    """Make ``crops_per_image`` pairs per photo and task and save them with train/validation splits.

    Args:
        images: ``(name, image)`` photos (unique names; any PIL mode), or a folder of photos
            (searched recursively, named by their path without suffix).
        out_dir: folder to create, with ``README.md`` (the card), ``samples.png``, ``skipped.jsonl``
            and ``mixture.yaml`` (the mixture this call made).
        tasks: names from :data:`instructsd.data.tasks.TASKS`; one pair per crop and task.
        size: side in pixels of every square input and edited image.
        crops_per_image: square crops per photo: the centre crop of the full short side, then
            squares of ``U[0.5, 1.0]`` x the short side at random positions (Lanczos-resized).
        val_fraction: share of *photos* held out for ``validation``, rounded, but at least one
            photo (and at least one left for train) when there are two or more.
        seed: the only source of randomness (crops, split, degradations, instructions).
        min_size: photos whose short side is smaller are skipped (default: ``size``).
        max_pixels: photos whose header declares more pixels are skipped, before decoding.
        progress: show progress bars.
        overwrite: replace an existing dataset at ``out_dir``, only once the new one is complete.
        num_proc, shard, engine, address: worker processes, ``(I, N)`` sharding, ``local`` or
            ``ray`` and the Ray cluster, as for ``build_mixture``.
        source_licenses: ``[{"source": ..., "license": ...}]`` of the photos, for the card.
        command: the command that rebuilds this dataset, for the card (the CLI passes itself).
        groups: ``{photo name: group}`` for photos that are one scene (default: each its own);
            the split keeps a group together.
        holdout: groups held out for validation by name, instead of the ``val_fraction`` draw.
        inverse: share of rows of invertible photo operations made as inverse pairs.

    Seeds: when every task predates the photo operations, the rows are the older
    ``seed_scheme: legacy`` ones (the shipped tiny base was built so); with a photo operation
    among the tasks the mixture scheme is used. The split rule is the same either way.

    Returns:
        The saved dataset, or ``None`` for a shard (its parts folder is the result).

    Raises:
        InstructSDError: bad arguments or ``out_dir`` exists without ``overwrite`` (before any work),
            or every photo was skipped. Unreadable, too small or too large photos are skipped,
            with reasons in ``skipped.jsonl``.
    """
    task_names = _check_args(images, tasks, crops_per_image, val_fraction)
    if isinstance(images, (str, Path)):
        source: object = {"folder": str(images)}
        n_images = len(find_images(images))  # raises for a missing or empty folder
    else:
        source, n_images = MemorySource(images, max_pixels, groups=groups), len(images)
    photo = any(is_photo_task(t) for t in task_names)
    extra = {"inverse": inverse} if inverse else {}
    mixture = parse_mixture({
        "seed": seed, "size": size, "val_fraction": val_fraction, "min_size": min_size, "max_pixels": max_pixels,
        "seed_scheme": "mixture" if photo else "legacy", "split": "permutation", "instructions": "sampled",
        **({"holdout": list(holdout)} if holdout else {}),
        "components": [{"task": t, "source": source, "count": n_images * crops_per_image,
                        **(extra if get_task(t).invertible else {})} for t in task_names],
    }, where="build_dataset")
    command = command or (f"instructsd.data.build_dataset(images, out, tasks={task_names!r}, size={size}, "
                          f"crops_per_image={crops_per_image}, val_fraction={val_fraction}, seed={seed})")
    return build_mixture(mixture, out_dir, num_proc=num_proc, shard=shard, overwrite=overwrite, progress=progress,
                         command=command, source_licenses=source_licenses, engine=engine, address=address)


def _check_args(images, tasks: Sequence[str], crops_per_image: int, val_fraction: float) -> tuple[str, ...]:
    """What the mixture cannot check for the adapter: names, tasks, crops, the photo split's range."""
    if not isinstance(images, (str, Path)):
        if not images:
            raise InstructSDError("no source images given; pass at least one (name, image) pair or a folder")
        dupes = sorted(n for n, k in Counter(name for name, _ in images).items() if k > 1)
        if dupes:
            raise InstructSDError(f"source image names must be unique, repeated: {', '.join(dupes)}; rename them")
    if isinstance(tasks, str):
        tasks = (tasks,)  # a single name, not its characters
    if not tasks or len(set(tasks)) != len(tasks):
        raise InstructSDError(f"tasks must be a non-empty list of distinct names, got {list(tasks)}")
    if crops_per_image < 1:
        raise InstructSDError(f"crops_per_image must be at least 1, got {crops_per_image}")
    if not 0.0 < val_fraction < 1.0:
        raise InstructSDError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return tuple(get_task(name).name for name in tasks)
