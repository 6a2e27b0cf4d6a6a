"""A keyed work queue: jobs for different keys run in parallel, jobs for one key in order.

Writing back to the API server is slow next to writing Redis; it must not hold up the
next change. Each Service's status job goes here: a newer job for a Service replaces one
still waiting, and never runs beside one already running (kopf's per-object queues).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class KeyedQueue:
    def __init__(self, workers: int, name: str) -> None:
        self._waiting: OrderedDict[str, Job] = OrderedDict()
        self._running: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, job: Job) -> None:
        """Queue `job` for `key`, replacing any job for that key that has not started."""
        with self._cond:
            self._waiting[key] = job
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._running

    def close(self, wait: bool = True) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                thread.join(timeout=30)

    def _next(self) -> tuple[str, Job] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                for key in self._waiting:
                    if key not in self._running:
                        job = self._waiting.pop(key)
                        self._running.add(key)
                        return key, job
                self._cond.wait()

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, job = item
            try:
                job()
            except Exception:
                log.exception("job for %s failed", key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    self._cond.notify_all()
