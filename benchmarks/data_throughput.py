"""Data-build throughput: pairs per second at 256 px, 1 vs 2 worker processes.

Two mixtures over the scikit-image sample photos, each built end to end (plan, chunks,
join, card) by ``instructsd.data.write.build_mixture``:

- ``synthetic``: one composed degradation per pair (``blur`` then ``noise``, plus ``rain``,
  ``haze``, ``jpeg`` and ``lowlight`` components), instructions sampled;
- ``cartoonizer``: the shipped classical cartoonizer as teacher.

Run:  .venv/bin/python benchmarks/data_throughput.py [--pairs 96] [--out benchmarks/results/data.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

from instructsd.data.write import build_mixture
from instructsd.data.mixture import parse_mixture


def mixture(kind: str, pairs: int) -> dict:
    base = {"seed": 0, "size": 256, "chunk_size": 8, "val_fraction": 0.1}
    src = {"samples": True}
    if kind == "cartoonizer":
        comps = [{"task": "cartoonize", "source": src, "teacher": "cartoonizer", "count": pairs}]
    else:
        per = pairs // 6
        comps = [{"name": f"c{i}", "source": src, "degradations": d, "count": per}
                 for i, d in enumerate([["blur", "noise"], ["rain"], ["haze"], ["jpeg"], ["lowlight"], ["motion_blur"]])]
    return {**base, "components": comps}


def timed(kind: str, pairs: int, num_proc: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = build_mixture(parse_mixture(mixture(kind, pairs)), Path(tmp) / "ds", num_proc=num_proc, progress=False)
        seconds = time.perf_counter() - t0
        return seconds, len(ds["train"]) + len(ds["validation"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for kind in ("synthetic", "cartoonizer"):
        result = {}
        for num_proc in (1, 2):
            # synthetic pairs are cheap: make 3x as many so fixed costs (fork, join) don't dominate
            seconds, n = timed(kind, args.pairs * (3 if kind == "synthetic" else 1), num_proc)
            result[num_proc] = n / seconds
            print(f"{kind:12s} num_proc={num_proc}: {n} pairs in {seconds:.1f} s = {n / seconds:.1f} pairs/s", flush=True)
        rows.append((kind, result[1], result[2], result[2] / result[1]))
    lines = [
        "# Data build throughput",
        "",
        f"Command: `.venv/bin/python benchmarks/data_throughput.py --pairs {args.pairs}`",
        f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "shared with other jobs); date: " + datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "",
        f"End-to-end `build_mixture` (plan, chunks of 8, join, card and sample grid) of {3 * args.pairs} "
        f"(synthetic) / {args.pairs} (cartoonizer) pairs "
        "at 256 x 256 px from the scikit-image sample photos; PNG-encoded rows. Fewer pairs than "
        "asked are made because sample photos under 256 px are skipped (recorded in skipped.jsonl).",
        f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on 2 cores "
        "shared with other engineers' jobs: the 2-process column measures contention as much as scaling; "
        "OpenCV also already spreads the cartoonizer's bilateral filter over both cores in one process.",
        "",
        "| mixture | 1 process (pairs/s) | 2 processes (pairs/s) | speed-up 2 vs 1 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {a:.1f} | {b:.1f} | {r:.2f}x |" for k, a, b, r in rows]
    lines += ["", "Per-pair cost at 256 px on one core, for reference: a degradation 1-20 ms, the cartoonizer "
              "~160 ms (measured on the shared machine), PNG encoding (level 1) ~8 ms per image."]
    lines += ["", "Synthetic: components blur→noise, rain, haze, jpeg, lowlight, motion_blur in equal counts.",
              "Outputs are identical for 1 and 2 processes (tested in tests/test_data_mixture.py).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
