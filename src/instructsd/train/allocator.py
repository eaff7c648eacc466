"""Keep freed memory in the process while training on the CPU (glibc only).

glibc returns every freed block above its mmap threshold (128 KiB, rising to at most 32 MiB) to the
kernel, so the next allocation of the same size page-faults it in again. A training step allocates and
frees gigabytes of activations and optimizer temporaries, so on an SD-1.5-size UNet that costs ~1.9 M
minor faults and ~5 s of system time per step on 2 cores; keeping the memory makes the step 1.6× faster
(benchmarks/RESULTS.md, "SD-1.5-size tier"). CUDA memory has its own caching allocator and is unaffected.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum: larger blocks are always mapped
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: never trim below 2 GiB of free heap
_TOP_PAD = 2**30  # grow the heap 1 GiB at a time


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory for reuse; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
