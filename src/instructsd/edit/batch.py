"""Editing many images: every (image, instruction, seed) into an output folder; sweeps as grids.

One bad file never stops a batch: whatever goes wrong with it (unreadable, a decompression
bomb, out of memory, any exception) goes to ``failures.jsonl`` in the output folder and the
batch moves on. Every output PNG carries how it was made (text chunks + sidecar JSON). The
output folder follows instructsd.edit.outputs: new, empty or instructsd's own, and files of an
earlier run are replaced only with ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from instructsd.edit.editor import EditSettings, edit_images
from instructsd.edit.inputs import DEFAULT_MAX_PIXELS, read_image
from instructsd.edit.io import save_png
from instructsd.edit.outputs import check_folder, open_folder
from instructsd.errors import InstructSDError

# CLI names for the settings a sweep may vary (as in the InstructPix2Pix paper's figure 4 grid).
SWEEP_KEYS = {
    "image_guidance": "image_guidance_scale",
    "guidance": "guidance_scale",
    "steps": "num_inference_steps",
}


@dataclass
class BatchResult:
    """What a batch wrote: output files, and (input, error) for every input that failed."""

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def output_stems(sources: Sequence[Path], root: Path | None) -> dict[Path, str]:
    """Output stem per source: the file stem, or its path under ``root`` joined by '__';
    a stem already taken (``a/x.png`` and ``b/x.png`` from two globs) gets ``-2``, ``-3``..."""
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    for source in sources:
        rel = source.relative_to(root) if root is not None and source.is_relative_to(root) else Path(source.name)
        stem = re.sub(r"[^\w.-]+", "_", "__".join(rel.with_suffix("").parts))
        unique, n = stem, 1
        while unique in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique)
        stems[source] = unique
    return stems


FAILURES = "failures.jsonl"


def output_name(stem: str, instruction_index: int, seed: int) -> str:
    return f"{stem}_i{instruction_index}_s{seed}.png"


def planned_files(sources: Sequence[Path], n_instructions: int, seeds: Sequence[int], root: Path | None) -> list[str]:
    """Every file name :func:`edit_batch` may write (PNGs, sidecars, the failure log)."""
    names = [FAILURES]
    for stem in output_stems(sources, root).values():
        for k in range(n_instructions):
            for seed in seeds:
                png = output_name(stem, k, seed)
                names += [png, png[: -len(".png")] + ".json"]
    return names


def record(result: BatchResult, out_dir: Path, source: Path, written: list[Path], error: str | None) -> None:
    """Add one input's outcome to ``result``; a failure also goes to ``failures.jsonl``."""
    if error is not None:
        with open(out_dir / FAILURES, "a") as f:  # appended line by line: survives a crash
            f.write(json.dumps({"image": str(source), "error": error}) + "\n")
        result.failures.append((str(source), error))
    result.outputs += written


def open_batch_folder(out_dir: str | Path, sources: Sequence[Path], instructions: Sequence[str],
                      seeds: Sequence[int], root: Path | None, overwrite: bool) -> Path:
    """Check and open the output folder of a batch (instructsd.edit.outputs), before any edit."""
    if not instructions:
        raise InstructSDError("give at least one --instruction")
    out_dir = Path(out_dir)
    check_folder(out_dir, planned_files(sources, len(instructions), seeds, root), overwrite)
    open_folder(out_dir)
    (out_dir / FAILURES).unlink(missing_ok=True)  # an earlier run's; check_folder allowed replacing it
    return out_dir


def batch_jobs(instructions: Sequence[str], seeds: Sequence[int]) -> list[tuple[int, str, int]]:
    """Every (instruction index, instruction, seed) one input is edited with, in output order."""
    return [(k, text, seed) for k, text in enumerate(instructions) for seed in seeds]


def edit_batch(
    pipe,
    sources: Sequence[Path],
    instructions: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    settings: EditSettings = EditSettings(),
    batch_size: int = 1,
    model_name: str = "",
    root: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> BatchResult:
    """Edit each source by each instruction with each seed; write PNGs into ``out_dir``.

    Outputs are named ``<stem>_i<instruction index>_s<seed>.png``.
    Jobs of one image share batches of ``batch_size``. An image that fails in any way — while
    reading, editing or saving — is recorded in ``out_dir/failures.jsonl`` and skipped.
    ``overwrite`` lets this run replace files an earlier run left in ``out_dir``.
    (:func:`instructsd.edit.ray_batch.edit_batch_on_ray` does the same on Ray.)
    """
    out_dir = open_batch_folder(out_dir, sources, instructions, seeds, root, overwrite)
    result = BatchResult()
    jobs = batch_jobs(instructions, seeds)
    stems = output_stems(sources, root)
    for source in sources:
        written, error = edit_one(pipe, source, stems[source], jobs, out_dir, settings, batch_size=batch_size,
                                  model_name=model_name, max_pixels=max_pixels, progress=progress)
        record(result, out_dir, source, written, error)
    return result


def edit_one(
    pipe,
    source: Path,
    stem: str,
    jobs: Sequence[tuple[int, str, int]],
    out_dir: Path,
    settings: EditSettings,
    *,
    batch_size: int = 1,
    model_name: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Path], str | None]:
    """Edit one input by every job and save the outputs; return them and the error, if any (never raises)."""
    written: list[Path] = []
    edited = None
    try:
        # The decode stops at the size the edit needs when the format allows (JPEG draft).
        image = read_image(source, max_pixels=max_pixels, max_side=settings.max_side)
        edited = edit_images(pipe, [image] * len(jobs), [j[1] for j in jobs], settings,
                             seeds=[j[2] for j in jobs], batch_size=batch_size, progress=progress)
        del image
        for (k, text, seed), out in zip(jobs, edited):
            meta = {"model": model_name, "image": str(source), "instruction": text, "seed": seed,
                    **dataclasses.asdict(settings)}
            written.append(save_png(out, out_dir / output_name(stem, k, seed), meta))
    except Exception as err:  # noqa: BLE001 - MemoryError, DecompressionBombError, anything: one image never stops the batch
        if progress is not None and edited is None:  # edit_images did not count these jobs
            progress(len(jobs))
        return written, str(err).splitlines()[0] if str(err) else type(err).__name__
    return written, None


# --- sweeps --------------------------------------------------------------------------------


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """'image_guidance=1.0,1.5,2.0' → ('image_guidance_scale', [1.0, 1.5, 2.0])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or key not in SWEEP_KEYS:
        raise InstructSDError(f"bad --sweep '{text}'; use KEY=v1,v2,... with KEY one of {', '.join(SWEEP_KEYS)}")
    try:
        parsed = [float(v) for v in values.split(",") if v.strip()]
    except ValueError as err:
        raise InstructSDError(f"bad --sweep '{text}': values must be numbers") from err
    if not parsed:
        raise InstructSDError(f"bad --sweep '{text}': no values")
    if not all(math.isfinite(v) for v in parsed):
        raise InstructSDError(f"bad --sweep '{text}': values must be finite numbers")
    field_name = SWEEP_KEYS[key]
    if field_name == "num_inference_steps":
        parsed = [int(v) for v in parsed]
    for value in parsed:  # the rules of EditSettings (guidance: any finite value >= 0), before any edit
        try:
            dataclasses.replace(EditSettings(), **{field_name: value})
        except InstructSDError as err:
            raise InstructSDError(f"bad --sweep '{text}': {err}") from None
    return field_name, parsed


def sweep_grid(
    pipe,
    image: Image.Image,
    instruction: str,
    sweeps: Sequence[tuple[str, list[float]]],
    settings: EditSettings = EditSettings(),
    seed: int = 0,
) -> tuple[Image.Image, list[tuple[dict, Image.Image]]]:
    """Edit ``image`` at every combination of one or two swept settings; return a labelled grid.

    Rows follow the first sweep, columns the second (a single sweep gives one row), all with
    the same seed, so the grid shows the setting's effect alone.
    """
    if not 1 <= len(sweeps) <= 2:
        raise InstructSDError("give one or two --sweep options")
    rows = sweeps[0] if len(sweeps) == 2 else (None, [None])
    cols = sweeps[-1]
    # Every cell's settings first, so a bad value fails before the first edit, not midway.
    plan = []
    for r in rows[1]:
        for c in cols[1]:
            changes = {cols[0]: c} if r is None else {rows[0]: r, cols[0]: c}
            plan.append((changes, dataclasses.replace(settings, **changes)))
    cells: list[tuple[dict, Image.Image]] = []
    for changes, cell_settings in plan:
        (out,) = edit_images(pipe, [image], [instruction], cell_settings, seeds=[seed])
        cells.append((changes, out))
    w, h = cells[0][1].size
    label_h = 14
    grid = Image.new("RGB", (w * len(cols[1]), (h + label_h) * len(rows[1])), "white")
    draw = ImageDraw.Draw(grid)
    for n, (changes, out) in enumerate(cells):
        x, y = (n % len(cols[1])) * w, (n // len(cols[1])) * (h + label_h)
        grid.paste(out, (x, y + label_h))
        label = " ".join(f"{_short(k)}={v:g}" for k, v in changes.items())
        draw.text((x + 2, y + 1), label, fill="black")
    return grid, cells


def _short(field_name: str) -> str:
    return {v: k for k, v in SWEEP_KEYS.items()}[field_name]
