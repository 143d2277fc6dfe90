"""Keeping freed CPU memory in the process, so that skipped steps do not page activation memory back in.

With glibc's default settings, memory freed at the top of the heap is handed back to the operating system once more
than a few hundred kB are free, and larger blocks are mapped afresh. A cached generation alternates cheap steps
(little memory in use) with computed ones, so each computed step can fault its activation memory back in page by
page; uncached generations, at a steady footprint, pay this far less. The cost is noise of ±5–10% in CPU timings
of small models. jemalloc and tcmalloc, which PyTorch's CPU tuning guide recommends, keep freed memory by default;
:func:`keep_freed_memory` does the same for glibc's allocator in a running process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 1 << 26) -> bool:
    """Raises glibc's trim and mmap thresholds for this process (``mallopt``); a no-op elsewhere.

    Args:
        trim_threshold: Free bytes at the top of the heap before glibc returns them to the system (default 1 GiB).
        mmap_threshold: Allocations from this size up get their own mapping (default 64 MiB).

    Returns:
        Whether the thresholds were set (``False`` off Linux or with another C library).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
