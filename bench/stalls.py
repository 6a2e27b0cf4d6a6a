"""Envoy's main thread watched from outside: it answers the admin API, applies xDS and
renders admin pages, one thing at a time, so a slow `/ready` is a held main thread.

The watch runs in a process of its own: a thread of the benchmark's process would share
its interpreter lock with whatever the benchmark does meanwhile (parsing 100 MB of
`/clusters`, packing Redis pipelines), and count its own waits for that lock as Envoy's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import urllib.request
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event


class StallWatch:
    """Envoy's main thread (xDS, admin, the stats flush) blocked: its admin `/ready` asked
    every 10 ms, and each answer that took `over_s` or more kept as (asked at, seconds),
    on this process's monotonic clock (the system's)."""

    def __init__(self, admin: str, over_s: float = 0.05) -> None:
        self.url = f"http://{admin}/ready"
        self.over_s = over_s
        self._stalls: list[tuple[float, float]] = []
        self._started = 0.0
        context = multiprocessing.get_context("fork")  # starts at once, imports nothing
        self._reader, writer = context.Pipe(duplex=False)
        self._watching, self._done = context.Event(), context.Event()
        self._process = context.Process(
            target=_watch, args=(self.url, over_s, self._watching, self._done, writer),
            daemon=True,
        )  # fmt: skip

    def __enter__(self) -> StallWatch:
        self._started = time.monotonic()
        self._process.start()
        self._watching.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._process.join(15)
        self._receive()

    @property
    def stalls(self) -> list[tuple[float, float]]:
        """The stalls seen so far."""
        self._receive()
        return self._stalls

    def _receive(self) -> None:
        with contextlib.suppress(EOFError):  # the watch has ended and all is read
            while self._reader.poll():
                self._stalls.append(self._reader.recv())

    def timeline(self) -> list[tuple[float, float]]:
        """Each stall as (seconds since the watch began, ms)."""
        return [(round(t - self._started, 2), round(took * 1000, 1)) for t, took in self.stalls]

    def overlapping(self, start: float, end: float) -> float:
        """Seconds of stalls that overlap [start, end]."""
        return sum(
            max(0.0, min(end, asked + took) - max(start, asked)) for asked, took in self.stalls
        )


def _watch(url: str, over_s: float, watching: Event, done: Event, out: Connection) -> None:
    watching.set()
    while not done.wait(0.01):
        asked = time.monotonic()
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310
            r.read()
        took = time.monotonic() - asked
        if took >= over_s:
            out.send((asked, took))
