"""Handing the C heap's free pages back to the system after a big read.

A cold read of the desired state (10,000 Services: their JSON documents, the dicts parsed
from them, translation's temporaries) frees most of what it allocated, but glibc's malloc
keeps freed pages for later, so a daemon's resident memory stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim  # None on a C library without it (musl)


_TRIM = _malloc_trim()


def give_back() -> bool:
    """Return free heap pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
