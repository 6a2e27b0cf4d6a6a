"""The daemons' memory: handing the C heap's free pages back after a big read, and
watching the pauses of Python's cyclic garbage collector.

A cold read of the desired state (10,000 Services: their JSON documents, the dicts parsed
from them, translation's temporaries) frees most of what it allocated, but glibc's malloc
keeps freed pages for later, so a daemon's resident memory stays at its peak.

A full collection walks every container object the process holds (the desired state, the
caches): it stops the daemon's every thread for as long, so a slow one is logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


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


SLOW_COLLECTION_S = 0.05


class CollectionWatch:
    """Counts the cyclic collector's pauses and logs each one longer than `slow_s`, with
    its generation and what it walked, so a latency spike can be told apart from one.

    With `freeze_survivors`, what outlives a full collection is frozen (`gc.freeze`): the
    next full collection walks only what came since, so its pause follows the churn, not
    the size of the state. A daemon's long-lived state (parsed JSON, models, protobufs)
    is freed by reference counting as before; only garbage cycles among frozen objects
    would stay, and that state makes none.
    """

    def __init__(self, slow_s: float = SLOW_COLLECTION_S, freeze_survivors: bool = False) -> None:
        self.slow_s = slow_s
        self.freeze_survivors = freeze_survivors
        self.pauses = 0
        self.slow = 0
        self.longest_s = 0.0
        self._began = 0.0

    def install(self) -> CollectionWatch:
        gc.callbacks.append(self._heard)
        return self

    def uninstall(self) -> None:
        if self._heard in gc.callbacks:
            gc.callbacks.remove(self._heard)

    def _heard(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.pauses += 1
        self.longest_s = max(self.longest_s, took)
        if took >= self.slow_s:
            self.slow += 1
            log.warning(
                "garbage collection of generation %d paused the process for %.0f ms "
                "(%d objects tracked, %d frozen)",
                info["generation"], took * 1000, len(gc.get_objects()), gc.get_freeze_count(),
            )  # fmt: skip
        if self.freeze_survivors and info["generation"] == 2:
            gc.freeze()
