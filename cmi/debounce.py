"""Hold dirty Services back a moment, so a burst of changes is rebuilt once, not once each.

A rollout touches a Service's EndpointSlices many times in a second; each change marks
the Service dirty, and the controller takes the batch after a quiet hold-off, or at the
latest after the maximum delay, so a steady stream of changes cannot starve it. A change
that comes after a quiet spell (no batch handed out for a hold-off) goes at once: waiting
only pays when more changes follow, and an idle system gains nothing from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable


class Debouncer:
    """Collects dirty keys; hands them out after a quiet hold-off, or at the latest after max."""

    def __init__(self, holdoff_s: float, max_holdoff_s: float) -> None:
        self.holdoff_s, self.max_holdoff_s = holdoff_s, max_holdoff_s
        self._keys: set[str] = set()
        self._first = 0.0
        self._last = 0.0
        self._handed = float("-inf")  # when the last batch was handed out
        self._cond = threading.Condition()

    def add(self, keys: Iterable[str]) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._keys:
                self._first = now
            self._keys.update(keys)
            self._last = now
            self._cond.notify()

    def take(self, timeout: float) -> set[str]:
        """Wait up to `timeout` for a first key, then for the hold-off; return the batch."""
        with self._cond:
            if not self._keys and not self._cond.wait(timeout):
                return set()
            idle = self._first - self._handed >= self.holdoff_s
            while self._keys and not idle:
                now = time.monotonic()
                due = min(self._last + self.holdoff_s, self._first + self.max_holdoff_s)
                if now >= due:
                    break
                self._cond.wait(due - now)
            keys, self._keys = self._keys, set()
            if keys:
                self._handed = time.monotonic()
            return keys
