"""Keep freed memory for reuse: the C allocator's settings for a process that allocates and frees the
same buffers every tick (docs/architecture.md "Speed: the allocator").

A play tick allocates and frees a few MB of tensors (the reprojection's candidates and keys, the
transformer's activations), each between 0.1 and a few MB. glibc's malloc serves such sizes from the
heap, but by default gives the heap's free top back to the OS whenever it exceeds twice its dynamic
mmap threshold, so the next tick faults the same pages in again: measured on the 2-core dev machine,
the shipped play rule's reprojection of 7 sources took 1,150-2,040 page faults and ~5 ms per call
instead of about one and ~1.7 ms, in some processes and not others (it depends on the heap's layout). Raising the
trim threshold keeps those pages; a fixed mmap threshold keeps the choice of heap or mmap the same in
every process. The cost is resident memory: up to KEEP_FREED_BYTES of freed heap stay mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
"""glibc's mallopt parameter numbers (malloc.h)."""
M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 256 << 20
"""Free heap memory kept mapped before any is given back to the OS (glibc's default: 128 KiB, raised
dynamically to twice the largest freed mmap chunk, at most 64 MiB)."""
MMAP_FROM_BYTES = 32 << 20
"""Allocations at least this large are mapped on their own (glibc's default: 128 KiB, raised
dynamically up to 32 MiB); smaller ones come from the heap, whose pages are kept."""
OPT_OUT_VARIABLE = "WORLDMODEL_SYSTEM_MALLOC"
"""Set to 1 to leave the C library's allocator settings alone (for A/B measurements)."""


def keep_freed_memory() -> bool:
    """Set the allocator as the module docstring says, once per process (the CLI does it first thing).
    Returns whether it was set: False on a C library other than glibc (macOS, musl, Windows: their
    allocators have no such settings), when OPT_OUT_VARIABLE is 1, or when glibc's own MALLOC_*
    environment variables are there (the user's settings win)."""
    if os.environ.get(OPT_OUT_VARIABLE) == "1":
        return False
    if any(name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM_BYTES) == 1
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
    return ok_mmap and ok_trim
