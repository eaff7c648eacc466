"""Data-build throughput, local engine vs Ray (issue 19): pairs per second at 1 and 2 CPUs.

The mixtures of ``data_throughput.py`` (synthetic degradations; the shipped cartoonizer) built
end to end by ``build_mixture`` with ``engine="local"`` (``num_proc`` 1 and 2) and with
``engine="ray"`` on a local Ray instance of 1 and 2 CPUs. For Ray the time is split into
starting the instance (``ray.init``) and the build itself, which includes starting the worker
processes and importing instructsd in them. The largest resident memory of a Ray worker during
the build is sampled (psutil, every 50 ms). Every Ray build is checked to equal the local one.

Run:  nice -n 10 .venv/bin/python benchmarks/data_ray.py [--pairs 96] [--out benchmarks/results/data_ray.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import datasets
import psutil
import ray

from data_throughput import mixture  # the same mixtures as the local benchmark (same folder)
from instructsd.data.mixture import parse_mixture
from instructsd.data.write import build_mixture


def _rows(ds: datasets.DatasetDict) -> list:
    return [ds[s].cast_column(c, datasets.Image(decode=False))[c] if isinstance(f, datasets.Image) else ds[s][c]
            for s in sorted(ds) for c, f in ds[s].features.items()]


class WorkerMemory:
    """Largest RSS of any Ray worker process (``ray::...``) while running."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for proc in psutil.process_iter(["name", "memory_info"]):
                if (proc.info["name"] or "").startswith("ray::") and proc.info["memory_info"]:
                    self.peak = max(self.peak, proc.info["memory_info"].rss)

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build(kind: str, pairs: int, engine: str, cpus: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mix = parse_mixture(mixture(kind, pairs))
        t0 = time.perf_counter()
        if engine == "ray":
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        t1 = time.perf_counter()
        with WorkerMemory() as memory:
            ds = build_mixture(mix, Path(tmp) / "ds", num_proc=cpus, engine=engine, progress=False)
        t2 = time.perf_counter()
        if engine == "ray":
            ray.shutdown()
        n = len(ds["train"]) + len(ds["validation"])
        return {"n": n, "init": t1 - t0, "build": t2 - t1, "total": t2 - t0, "rows": _rows(ds),
                "worker_rss": memory.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    table = []
    for kind in ("synthetic", "cartoonizer"):
        pairs = args.pairs * (3 if kind == "synthetic" else 1)  # as data_throughput.py
        local = {}
        for engine in ("local", "ray"):
            for cpus in (1, 2):
                r = build(kind, pairs, engine, cpus)
                if engine == "local":
                    local[cpus] = r["rows"]
                assert r["rows"] == local[1], f"{kind} {engine} {cpus}: not the local engine's dataset"
                print(f"{kind:12s} {engine:5s} cpus={cpus}: {r['n']} pairs in {r['total']:.1f} s "
                      f"(init {r['init']:.1f} s) = {r['n'] / r['total']:.1f} pairs/s", flush=True)
                table.append((kind, engine, cpus, r))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Data build on Ray vs the local engine (issue 19)",
        "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/data_ray.py --pairs {args.pairs}` (Ray {ray.__version__})",
        f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.machine()}), shared with other jobs; date: {when}; "
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        "The mixtures of `data_throughput.py` (256 px, chunks of 8), end to end (plan, chunks, join, card). "
        "Ray: a local instance of N CPUs started for the build (`ray.init`, counted in the total) and shut down "
        "after; its build time includes starting the workers and importing instructsd in them. Every Ray "
        "dataset was checked equal to the local one, row for row.",
        "",
        "| mixture | engine | CPUs | pairs | total s | of which ray.init s | pairs/s | pairs/s without init | peak RSS per Ray worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, engine, cpus, r in table:
        rss = f"{r['worker_rss'] / 2**20:.0f} MiB" if engine == "ray" else "-"
        init = f"{r['init']:.1f}" if engine == "ray" else "-"
        lines.append(f"| {kind} | {engine} | {cpus} | {r['n']} | {r['total']:.1f} | {init} | "
                     f"{r['n'] / r['total']:.1f} | {r['n'] / r['build']:.1f} | {rss} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
