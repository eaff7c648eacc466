"""Mixed text-to-image and edit training (issue 18): which rows are which, and how each trains.

A row whose task is ``t2i`` (data/t2i.py) is an image with its caption and no real input image.
It trains as InstructPix2Pix's image-dropout case (Brooks et al. 2023, sec. 3.2.1): the input-image
latents are zeroed, the caption is the text, the image is the target — ε_θ(z_t, ∅, c_T), the very
branch that classifier-free guidance over the image (eq. 3) starts from. The conditioning dropout
still applies on top (so a t2i sample may also lose its caption: the fully unconditional case).

The share of each kind in every epoch goes to the run's log and to ``data_mix.json``
(``{epoch: {"samples": {kind: n}, "share": {kind: fraction}}}``), rewritten atomically: a resumed
run rewrites the epochs it trains again with the same numbers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from instructsd.data.t2i import T2I_TASK
from instructsd.files import atomic_write_text

EDIT, T2I = "edit", "t2i"
MIX_FILE = "data_mix.json"


def kind_of(task: str | None) -> str:
    return T2I if task == T2I_TASK else EDIT


def without_t2i_images(image_latents: torch.Tensor, kinds: list[str] | None) -> torch.Tensor:
    """The input-image latents with every text-to-image sample's zeroed: the objective's dropped image."""
    if not kinds or T2I not in kinds:
        return image_latents
    keep = torch.tensor([k != T2I for k in kinds], device=image_latents.device)
    return image_latents * keep.to(image_latents)[:, None, None, None]


def report_kinds(out: Path, epoch: int, counts: Counter | dict | None, main: bool, partial: bool = False) -> None:
    """One epoch's samples per kind: a line on stdout (when there is more than one kind) and ``data_mix.json``."""
    if not main or not counts:
        return
    total = sum(counts.values())
    share = {k: counts[k] / total for k in sorted(counts)}
    path = Path(out) / MIX_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    if partial and record.get(str(epoch), {}).get("complete"):  # the run stopped right at the epoch's end
        return
    record[str(epoch)] = {"samples": {k: int(counts[k]) for k in sorted(counts)}, "share": share, "complete": not partial}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if len(share) > 1:
        parts = ", ".join(f"{k} {v:.1%}" for k, v in share.items())
        print(f"epoch {epoch}{' (so far)' if partial else ''}: {total} samples: {parts}")
