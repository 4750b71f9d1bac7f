"""Keep the memory one training step frees for the next one, instead of giving it back to the system.

A step allocates and frees the same large buffers every time (a prior's logits and their gradient,
1,024 x 2,048 floats at Jukebox's shape: 8 MB each; a VQ-VAE's activations). glibc's malloc, left to
itself, returns such memory to the kernel when it is freed (whole mappings, or the top of the heap past
128 KiB), so the next step faults it back in page by page: measured on a 2-core Xeon, a sixth to a fifth of a prior
training step at Jukebox's test shape (bench/bench_heap.py). `keep_freed_memory` tells malloc to serve
buffers up to 32 MiB from the heap and never to shrink it: the process keeps its peak heap, which a
training run reaches in its first step anyway. Only glibc has these settings; elsewhere nothing changes.
Set HOUSEBOX_KEEP_HEAP=0 to leave malloc's defaults (bench_heap.py compares both).
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1  # free memory at the top of the heap beyond this is returned to the kernel
M_TOP_PAD = -2  # extra bytes asked of the kernel whenever the heap grows
M_MMAP_THRESHOLD = -3  # requests at least this large get a mapping of their own, unmapped when freed

MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
TOP_PAD = 64 * 1024 * 1024
NEVER_TRIM = 2**31 - 1

_KEPT: bool | None = None


def keep_freed_memory() -> bool:
    """Ask malloc to keep freed memory for reuse (see the module docstring); once per process.
    True when the settings took effect, False where they could not (not glibc) or are switched off."""
    global _KEPT
    if _KEPT is None:
        _KEPT = os.environ.get("HOUSEBOX_KEEP_HEAP", "1") != "0" and _set_glibc_options()
    return _KEPT


def _set_glibc_options() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), mallopt(M_TRIM_THRESHOLD, NEVER_TRIM),
            mallopt(M_TOP_PAD, TOP_PAD)]
    return all(done)
