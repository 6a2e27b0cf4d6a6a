"""Envoy's main thread watched from outside: it answers the admin API, applies xDS and
renders admin pages, one thing at a time, so a slow `/ready` is a held main thread."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request


class StallWatch:
    """Envoy's main thread (xDS, admin, the stats flush) blocked: its admin `/ready` asked
    every 10 ms, and each answer that took `over_s` or more kept as (asked at, seconds)."""

    def __init__(self, admin: str, over_s: float = 0.05) -> None:
        self.url = f"http://{admin}/ready"
        self.over_s = over_s
        self.stalls: list[tuple[float, float]] = []
        self._started = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StallWatch:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._done.wait(0.01):
            asked = time.monotonic()
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url, timeout=10) as r:  # noqa: S310
                r.read()
            took = time.monotonic() - asked
            if took >= self.over_s:
                self.stalls.append((asked, took))

    def timeline(self) -> list[tuple[float, float]]:
        """Each stall as (seconds since the watch began, ms)."""
        return [(round(t - self._started, 2), round(took * 1000, 1)) for t, took in self.stalls]

    def overlapping(self, start: float, end: float) -> float:
        """Seconds of stalls that overlap [start, end]."""
        return sum(
            max(0.0, min(end, asked + took) - max(start, asked)) for asked, took in self.stalls
        )
