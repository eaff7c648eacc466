"""Where a run's numbers go: JSONL files in the run folder always, TensorBoard and W&B through
accelerate's trackers when asked (``report_to``, as diffusers' training scripts spell it).

``losses.jsonl`` gets one line per optimizer step (loss, learning rate, gradient norm),
``validation.jsonl`` one line per validation and ``skipped_rows.jsonl`` one line per training row
whose images failed to decode (index and reason); all survive a resume: they are cut back to the
checkpoint's record (atomically) and appended to after. Trackers get the same scalars and the
validation grids, from the main process only (accelerate's ``log`` is a no-op elsewhere).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from instructsd.errors import InstructSDError
from instructsd.files import atomic_write_text

TRACKERS = ("tensorboard", "wandb")
SKIPPED_ROWS = "skipped_rows.jsonl"
PROJECT = "instructsd"


def resolve_report_to(report_to: str | None) -> list[str]:
    """The trackers a ``report_to`` value asks for; null means TensorBoard when it is installed."""
    installed = {name: importlib.util.find_spec(name) is not None for name in TRACKERS}
    if report_to is None:
        if not installed["tensorboard"]:
            print("note: tensorboard is not installed, so metrics go to losses.jsonl/validation.jsonl only "
                  "(pip install tensorboard, or set report_to=none to silence this)")
        return ["tensorboard"] if installed["tensorboard"] else []
    wanted = {"none": [], "all": list(TRACKERS)}.get(report_to, [report_to])
    for name in wanted:
        if not installed[name]:
            raise InstructSDError(f"report_to={report_to} needs the {name} package: pip install {name} "
                                  f"(or set report_to=none to log to the run folder's JSONL files only)")
    return wanted


def tracker_config(config: dict) -> dict:
    """The run config as TensorBoard's hparams accept it (scalars and strings only)."""
    out = {}
    for key, value in config.items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def trim_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep the records of ``path`` up to ``last_step`` (a resumed run logs the rest again)."""
    if not path.is_file():
        return []
    kept = [r for r in map(json.loads, filter(None, path.read_text().splitlines())) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


class RunLog:
    """The run's numbers, written by the main process; ``log`` entries are dicts with a ``step``."""

    def __init__(self, accelerator, out: Path, trackers: list[str], config: dict, history: list[dict], resumed_step: int,
                 skipped: set = frozenset()):
        self.accelerator, self.out = accelerator, Path(out)
        self.main = accelerator.is_main_process
        self.losses = self.validation = None
        if trackers:
            # A resumed run rewrites TensorBoard's steps after the checkpoint instead of duplicating them.
            kwargs = {"tensorboard": {"purge_step": resumed_step + 1}} if resumed_step else {}
            if "wandb" in trackers:
                kwargs["wandb"] = {"dir": str(self.out), "name": self.out.name, "resume": "allow"}
            accelerator.init_trackers(PROJECT, config=tracker_config(config), init_kwargs=kwargs)
        if self.main:
            # The checkpoint's record is the truth: lines after it belong to steps that will run again.
            atomic_write_text(self.out / "losses.jsonl", "".join(json.dumps(e) + "\n" for e in history))
            trim_jsonl(self.out / "validation.jsonl", resumed_step)
            self.losses = (self.out / "losses.jsonl").open("a")
            # Rows counted by the checkpoint stay listed; later lines come again as the run re-reads them.
            listed = self.out / SKIPPED_ROWS
            if listed.is_file():
                kept = [line for line in listed.read_text().splitlines() if line and json.loads(line)["index"] in skipped]
                atomic_write_text(listed, "".join(line + "\n" for line in kept))

    def skipped(self, rows: list[tuple]) -> None:
        """Training rows whose images failed to decode, as ``(index, reason)`` (main process's rows)."""
        if self.main:
            with (self.out / SKIPPED_ROWS).open("a") as fh:
                fh.write("".join(json.dumps({"index": i, "reason": why}) + "\n" for i, why in rows))

    def step(self, entry: dict, flush: bool = False) -> None:
        """One optimizer step's loss, learning rate and gradient norm."""
        if self.losses is not None:
            self.losses.write(json.dumps(entry) + "\n")
            if flush:
                self.losses.flush()
        self.accelerator.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=entry["step"])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Validation metrics (main process only)."""
        with (self.out / "validation.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        self.accelerator.log(values, step=step)

    def image(self, step: int, path: Path) -> None:
        """A validation grid, to every tracker that takes images."""
        from PIL import Image

        batch = np.asarray(Image.open(path).convert("RGB"))[None]  # one HWC image in a batch
        for tracker in self.accelerator.trackers:
            extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}  # TensorBoard assumes NCHW
            tracker.log_images({"validation/grid": batch}, step=step, **extra)

    def close(self) -> None:
        if self.losses is not None:
            self.losses.close()
            self.losses = None


class StepTimer:
    """Steady-state wall and CPU seconds per optimizer step for benchmarks: the first step (warm-up,
    allocation, compilation) is excluded."""

    def __init__(self):
        self.first: tuple[int, float, float] | None = None

    def step_done(self, step: int) -> None:
        if self.first is None:
            self.first = (step, time.perf_counter(), time.process_time())

    def per_step(self, step: int) -> tuple[float, float]:
        if self.first is None or step <= self.first[0]:
            return 0.0, 0.0
        first, wall, cpu = self.first
        return (time.perf_counter() - wall) / (step - first), (time.process_time() - cpu) / (step - first)
