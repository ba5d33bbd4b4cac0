"""Giving the memory the broker freed back to the system.

glibc's malloc keeps what a process frees for its next allocations, returning only the top
of its heap; what is freed in the middle stays resident. A broker that keeps answers for a
while and a store's page cache frees and allocates all the time, so its RSS grows in steps
long after what it holds has stopped growing (a core driven for an hour holds the same
traced bytes each minute: docs/performance.md). `malloc_trim(0)` hands every free page back
(madvise), so that RSS follows what is live; Dask's workers do the same through
MALLOC_TRIM_THRESHOLD_. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY = 60.0  # seconds between trims: each walks the heap (a few milliseconds)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_TRIM = _malloc_trim()


def trim() -> bool:
    """Give free heap pages back to the system; whether any were (False without glibc)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
