"""Build and load the instruction-editing dataset: photos -> crops -> task pairs -> disk.

The saved dataset is a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits and
the columns of InstructPix2Pix's public datasets (``input_image``, ``edit_prompt``,
``edited_image``) plus ``task`` and ``source`` for per-task metrics and leak checks.

Reproducibility: each sample draws from its own generator,
``np.random.default_rng([seed, image_index, crop_index, task_index])``, so a sample does not
depend on which other images or tasks were processed, or in what order.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from instructsd.data.images import to_rgb
from instructsd.data.load import open_saved  # noqa: F401 -- moved to data/load.py (issue 12); chunked.py and tests import it from here
from instructsd.data.tasks import TASKS, Task, get_task
from instructsd.errors import InstructSDError

FEATURES = datasets.Features(
    {
        "input_image": datasets.Image(),
        "edit_prompt": datasets.Value("string"),
        "edited_image": datasets.Image(),
        "task": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)
COLUMNS: tuple[str, ...] = tuple(FEATURES)
SPLITS: tuple[str, ...] = ("train", "validation")

CROP_SCALE = (0.5, 1.0)  # crop side as a fraction of the photo's short side
# numpy's SeedSequence ignores trailing zeros ([s, i] seeds like [s, i, 0, 0]), so streams
# other than the per-sample one get a fifth, non-zero word to stay independent of it.
_CROP_STREAM = 1
_SPLIT_STREAM = 2
_BUILD_HINT = "build one with `instructsd data build`"
_GRID_EXAMPLES = 4  # (input | edited) pairs per task row in samples.png


# --- build ---------------------------------------------------------------------------------


def build_dataset(
    images: Sequence[tuple[str, Image.Image]],
    out_dir: str | Path,
    *,
    tasks: Sequence[str] = ("denoise", "lowlight", "cartoonize"),
    size: int = 64,
    crops_per_image: int = 4,
    val_fraction: float = 0.15,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    source_licenses: Sequence[Mapping[str, str]] | None = None,
    command: str | None = None,
) -> datasets.DatasetDict:
    """Make ``len(images) * crops_per_image * len(tasks)`` training pairs and save them.

    Args:
        images: ``(name, image)`` source photos; names must be unique (they fill ``source``
            and decide the split). Any PIL mode is accepted and converted to RGB.
        out_dir: folder to create; it also gets ``README.md`` (a dataset card) and
            ``samples.png`` (one row per task of input | edited examples).
        tasks: names from :data:`instructsd.data.tasks.TASKS`; one pair per crop and task.
        size: side in pixels of every square input and edited image.
        crops_per_image: square crops per photo. The first is the centre crop of the full
            short side; the others have a side of ``U[0.5, 1.0]`` x short side at a random
            position, so the crops differ in scale. All are resized with Lanczos.
        val_fraction: share of *source photos* held out for ``validation``, rounded, but at
            least one photo (and at least one left for train) when there are two or more.
        seed: the only source of randomness (crops, split, degradations, instructions).
        progress: show a tqdm bar.
        overwrite: replace an existing dataset at ``out_dir``, only once the new one is
            fully written.
        source_licenses: ``[{"source": ..., "license": ...}]`` of the photos, for the card's
            metadata block (unknown when not given).
        command: the command that rebuilds this dataset, for the card (the CLI passes itself).

    Returns:
        The saved dataset, loaded back from ``out_dir``.

    Raises:
        InstructSDError: bad arguments, or ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = Path(os.path.normpath(out_dir))
    task_list = _check_args(images, out_dir, tasks, size, crops_per_image, val_fraction, overwrite)
    names = [name for name, _ in images]
    val_sources = split_sources(names, val_fraction, seed)
    task_index = {name: i for i, name in enumerate(TASKS)}  # registry index: stable seeds

    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    grid: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {t.name: [] for t in task_list}
    for i, (name, image) in enumerate(tqdm(images, desc="building pairs", unit="image",
                                           disable=not progress)):
        split = "validation" if name in val_sources else "train"
        crop_rng = np.random.default_rng([seed, i, 0, 0, _CROP_STREAM])
        for c, crop in enumerate(random_crops(to_rgb(image), size, crops_per_image, crop_rng)):
            clean = np.asarray(crop)
            for task in task_list:
                rng = np.random.default_rng([seed, i, c, task_index[task.name]])
                prompt = task.instructions[int(rng.integers(len(task.instructions)))]
                inp, target = task.apply(clean, rng)
                rows[split].append({
                    "input_image": _png(inp),
                    "edit_prompt": prompt,
                    "edited_image": _png(target),
                    "task": task.name,
                    "source": name,
                })
                if c == 0 and len(grid[task.name]) < _GRID_EXAMPLES:
                    grid[task.name].append((inp, target))

    dataset = datasets.DatasetDict(
        {split: datasets.Dataset.from_list(rows[split], features=FEATURES) for split in SPLITS}
    )
    command = command or (f"instructsd.data.build_dataset(images, out, tasks={tuple(t.name for t in task_list)!r}, "
                          f"size={size}, crops_per_image={crops_per_image}, val_fraction={val_fraction}, seed={seed})")
    card = dataset_card(dataset, task_list, seed=seed, size=size, crops_per_image=crops_per_image,
                        source_licenses=source_licenses, command=command)

    def write(folder: Path) -> None:
        with _datasets_progress(progress):
            dataset.save_to_disk(str(folder))
        (folder / "README.md").write_text(card, encoding="utf-8")
        samples_grid(grid).save(folder / "samples.png")

    save_atomically(write, out_dir, overwrite=overwrite)
    return load_instruction_dataset(out_dir)


def _png(array: np.ndarray) -> dict[str, bytes | None]:
    """Encode now: PNG bytes are lossless and ~2x smaller than the pixels held until saving."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _check_args(
    images: Sequence[tuple[str, Image.Image]],
    out_dir: Path,
    tasks: Sequence[str],
    size: int,
    crops_per_image: int,
    val_fraction: float,
    overwrite: bool,
) -> list[Task]:
    """Fail before any work is done; returns the resolved tasks."""
    if out_dir.exists() and not overwrite:
        raise InstructSDError(
            f"output folder '{out_dir}' exists; pass overwrite=True (--overwrite) "
            "or choose another folder"
        )
    if not images:
        raise InstructSDError("no source images given; pass at least one (name, image) pair")
    dupes = sorted(n for n, k in Counter(name for name, _ in images).items() if k > 1)
    if dupes:
        raise InstructSDError(
            f"source image names must be unique, repeated: {', '.join(dupes)}; rename them"
        )
    if isinstance(tasks, str):
        tasks = (tasks,)  # a single name, not its characters
    if not tasks or len(set(tasks)) != len(tasks):
        raise InstructSDError(f"tasks must be a non-empty list of distinct names, got {list(tasks)}")
    if size < 8:
        raise InstructSDError(f"size must be at least 8 pixels, got {size}")
    if crops_per_image < 1:
        raise InstructSDError(f"crops_per_image must be at least 1, got {crops_per_image}")
    if not 0.0 < val_fraction < 1.0:
        raise InstructSDError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return [get_task(name) for name in tasks]


def random_crops(
    image: Image.Image, size: int, n: int, rng: np.random.Generator
) -> list[Image.Image]:
    """``n`` square crops of ``image`` resized to ``size`` x ``size``; see ``build_dataset``."""
    w, h = image.size
    short = min(w, h)
    boxes = [((w - short) / 2, (h - short) / 2, float(short))]  # centre: the photo as framed
    while len(boxes) < n:
        side = short * rng.uniform(*CROP_SCALE)
        boxes.append((rng.uniform(0, w - side), rng.uniform(0, h - side), side))
    # Cropping through resize's float `box` avoids rounding the crop to whole pixels, and
    # Lanczos widens its kernel when shrinking, so large photos are properly antialiased.
    return [
        image.resize((size, size), Image.Resampling.LANCZOS, box=(x, y, x + side, y + side))
        for x, y, side in boxes[:n]
    ]


def split_sources(names: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The source names held out for validation (whole photos, so no crop leaks to train)."""
    n = len(names)
    if n < 2:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng([seed, 0, 0, 0, _SPLIT_STREAM]).permutation(n)
    return {names[int(k)] for k in order[:n_val]}


@contextlib.contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Silence datasets' own bars when ``progress=False``; its switch is global, so restore it."""
    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            datasets.enable_progress_bars()


# --- atomic save ---------------------------------------------------------------------------


def save_atomically(write: Callable[[Path], None], out_dir: Path, *, overwrite: bool) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then rename it to ``out_dir``.

    A crash or error leaves either nothing or the previous ``out_dir``, never a half-written
    dataset that ``load_from_disk`` might half-read. The rename is atomic because the
    temporary folder is on the same filesystem (same parent).
    """
    out_dir = Path(os.path.abspath(out_dir))  # "." and "a/.." have no name to make a sibling of
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        old = _move_aside(out_dir, overwrite=overwrite)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:
                old.rename(out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


def _move_aside(out_dir: Path, *, overwrite: bool) -> Path | None:
    """Rename an existing ``out_dir`` out of the way; refuse anything that isn't a dataset."""
    if not out_dir.exists():
        return None
    if not overwrite:  # it appeared while we were building
        raise InstructSDError(
            f"output folder '{out_dir}' exists; pass overwrite=True (--overwrite) "
            "or choose another folder"
        )
    # overwrite deletes the old folder: only do that to a dataset (or an empty folder), so a
    # mistyped path such as the home directory is never wiped.
    if not out_dir.is_dir() or (any(out_dir.iterdir())
                                and not (out_dir / "dataset_dict.json").is_file()):
        raise InstructSDError(
            f"'{out_dir}' exists and is not a dataset built by instructsd; refusing to replace "
            "it even with overwrite=True; choose another folder"
        )
    if Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise InstructSDError(
            f"'{out_dir}' is or contains the current directory, which overwrite would delete; "
            "run from elsewhere or choose another folder"
        )
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    return old


# --- card and preview ----------------------------------------------------------------------

SAMPLES_LICENSE = {"source": "scikit-image's bundled sample photos (skimage/data)",
                   "license": "CC0 or public domain, per photo, as scikit-image documents each one"}
UNKNOWN_LICENSE = "unknown to instructsd: state it here before you share the dataset"


def size_category(rows: int) -> str:
    """The hub's ``size_categories`` bucket for a number of rows."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "10M<n<100M"


def card_metadata(dataset: datasets.DatasetDict, *, sources: Sequence[Mapping[str, str]], command: str,
                  license: str = "other") -> str:
    """The YAML block a hub dataset card starts with (issue 12): license, task categories, sources and
    their licenses, size, splits and the command that built it. ``data push`` uploads it as README.md;
    datasets' push_to_hub then adds its own ``dataset_info``/``configs`` keys to the same block."""
    rows = sum(len(d) for d in dataset.values())
    meta = {
        "pretty_name": "instructsd instruction-editing pairs",
        "license": license,
        "license_details": "Pairs derived from the sources below; each source's license governs what is made from it.",
        "task_categories": ["image-to-image"],
        "language": ["en"],
        "tags": ["image-editing", "instruction-tuning", "instructpix2pix", "instructsd"],
        "size_categories": [size_category(rows)],
        "source_datasets": [str(s["source"]) for s in sources],
        "source_licenses": [{"source": str(s["source"]), "license": str(s["license"])} for s in sources],
        "splits": {name: len(split) for name, split in dataset.items()},
        "builder_command": command,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def dataset_card(
    dataset: datasets.DatasetDict, tasks: Sequence[Task], *, seed: int, size: int,
    crops_per_image: int, source_licenses: Sequence[Mapping[str, str]] | None = None, command: str | None = None,
) -> str:
    """A short README.md: a YAML metadata block, then how it was made, counts per split and task,
    sources, instructions. ``source_licenses``: [{source, license}] of the photos (unknown if not given);
    ``command``: what rebuilds it (the equivalent ``build_dataset`` call if not given)."""
    counts = {split: Counter(dataset[split]["task"]) for split in SPLITS}
    sources = {split: sorted(set(dataset[split]["source"])) for split in SPLITS}
    header = "| split | photos | pairs | " + " | ".join(t.name for t in tasks) + " |"
    command = command or "instructsd.data.build_dataset(...) (arguments not recorded)"
    licenses = source_licenses or [{"source": "the photos passed to build_dataset", "license": UNKNOWN_LICENSE}]
    lines = [
        card_metadata(dataset, sources=licenses, command=command),
        "# instructsd instruction-editing dataset",
        "",
        f"Built by `instructsd.data.build_dataset` with seed {seed}: {crops_per_image} square "
        f"crops per source photo at {size}x{size} px, one (input, instruction, edited) pair "
        "per crop and task. Train and validation are split by source photo.",
        "",
        "Load with `instructsd.data.load_instruction_dataset(path)` or "
        "`datasets.load_from_disk(path)`. Columns: " + ", ".join(f"`{c}`" for c in COLUMNS) + ".",
        "",
        header,
        "|" + "---|" * (3 + len(tasks)),
    ]
    for split in SPLITS:
        per_task = " | ".join(str(counts[split][t.name]) for t in tasks)
        lines.append(f"| {split} | {len(sources[split])} | {len(dataset[split])} | {per_task} |")
    lines += ["", "## Tasks (canonical instruction, number of paraphrases)", ""]
    lines += [f'- `{t.name}`: "{t.canonical}" ({len(t.instructions)})' for t in tasks]
    lines += ["", "## Source photos", ""]
    lines += [f"- {split}: {', '.join(sources[split]) or '(none)'}" for split in SPLITS]
    lines += [f"- license of {s['source']}: {s['license']}" for s in licenses]
    lines += ["", "## Examples (input | edited)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def samples_grid(examples: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                 cell: int = 128) -> Image.Image:
    """One row per task, labelled, of ``input | edited`` pairs, each image ``cell`` px."""
    label_w, gap, pad = 110, 2, 10
    n = max((len(v) for v in examples.values()), default=0)
    width = label_w + n * (2 * cell + gap + pad)
    canvas = Image.new("RGB", (max(width, label_w), max(1, len(examples)) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (task, pairs) in enumerate(examples.items()):
        top = r * (cell + pad)
        draw.text((4, top + cell // 2 - 6), task, fill="black", font=font)
        for k, pair in enumerate(pairs):
            left = label_w + k * (2 * cell + gap + pad)
            for j, arr in enumerate(pair):
                im = Image.fromarray(arr)
                # Nearest when enlarging so the preview shows the real pixels, not a blur.
                up = im.width < cell
                im = im.resize((cell, cell), Image.Resampling.NEAREST if up else Image.Resampling.LANCZOS)
                canvas.paste(im, (left + j * (cell + gap), top))
    return canvas


# --- load ----------------------------------------------------------------------------------


def load_instruction_dataset(path: str | Path) -> datasets.DatasetDict:
    """Load a dataset saved by :func:`build_dataset`, checking its splits and columns.

    Raises:
        InstructSDError: ``path`` is missing or not a saved ``DatasetDict``, or it lacks a
            split of :data:`SPLITS` or a column of :data:`COLUMNS`.
    """
    path = Path(path)
    dataset = open_saved(path)
    for split in SPLITS:
        if split not in dataset:
            raise InstructSDError(
                f"dataset '{path}' has no '{split}' split (it has: {', '.join(dataset) or 'none'}); "
                f"{_BUILD_HINT}"
            )
    for split in SPLITS:
        features = dataset[split].features
        missing = [c for c in COLUMNS if c not in features]
        if missing:
            raise InstructSDError(
                f"dataset '{path}' split '{split}' lacks column(s) {', '.join(missing)} "
                f"(expected {', '.join(COLUMNS)}); {_BUILD_HINT}"
            )
        for col in ("input_image", "edited_image"):
            if not isinstance(features[col], datasets.Image):
                raise InstructSDError(
                    f"dataset '{path}' split '{split}' column '{col}' holds {features[col]}, "
                    f"not images; {_BUILD_HINT}"
                )
    return dataset
