"""CPU threads under contention: 60 quickstart training steps with torch's default OpenMP threads,
one thread, flush-denormal, or OMP_WAIT_POLICY=PASSIVE (benchmarks/RESULTS.md, "CPU threads").

    OMP_WAIT_POLICY=ACTIVE python benchmarks/cpu_threads.py default    # what torch does unless told
    OMP_WAIT_POLICY=ACTIVE python benchmarks/cpu_threads.py one
    OMP_WAIT_POLICY=ACTIVE python benchmarks/cpu_threads.py flush
    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_threads.py passive   # the CLI's default since this run

DATA is a quickstart dataset (`instructsd quickstart` writes one to runs/quickstart/data).
"""

import os
import sys
import time
from dataclasses import replace

import torch

from instructsd.config import load_config
from instructsd.models.loading import tiny_base_path
from instructsd.train.config import TrainConfig
from instructsd.train.loop import train

mode = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else "runs/quickstart/data"
if mode == "one":
    torch.set_num_threads(1)
if mode == "flush":
    torch.set_flush_denormal(True)
cfg = replace(load_config(TrainConfig, "quickstart"), dataset=data, base_model=str(tiny_base_path()),
              output_dir=f"runs/bench-threads-{mode}", max_train_steps=60, validation_every=0, report_to="none",
              overwrite=True, cache_latents=True, log_every=10)
started = time.time()
result = train(cfg, progress=False)
print(f"{mode} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch threads {torch.get_num_threads()}): "
      f"{time.time() - started:.1f} s for 60 steps, last loss {result.losses[-1][1]:.4f}")
