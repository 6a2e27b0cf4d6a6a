"""The hold-off: a burst of changes is handed out once, and a steady stream cannot starve it."""

from __future__ import annotations

import threading
import time

from cmi.debounce import Debouncer


def test_nothing_dirty_returns_empty_after_the_timeout() -> None:
    began = time.monotonic()
    assert Debouncer(0.05, 1.0).take(timeout=0.05) == set()
    assert time.monotonic() - began >= 0.04


def test_a_change_after_a_quiet_spell_goes_at_once() -> None:
    dirty = Debouncer(holdoff_s=1.0, max_holdoff_s=5.0)
    dirty.add(["shop/a"])
    began = time.monotonic()
    assert dirty.take(timeout=1.0) == {"shop/a"}
    assert time.monotonic() - began < 0.5  # not the 1 s hold-off


def test_a_burst_is_one_batch_after_a_quiet_hold_off() -> None:
    dirty = Debouncer(holdoff_s=0.1, max_holdoff_s=5.0)
    dirty.add(["shop/first"])
    assert dirty.take(timeout=1.0) == {"shop/first"}  # at once: nothing came before it
    dirty.add(["shop/a"])  # the rest of the burst, right behind it
    dirty.add(["shop/b", "shop/a"])
    began = time.monotonic()
    assert dirty.take(timeout=1.0) == {"shop/a", "shop/b"}
    assert 0.05 <= time.monotonic() - began < 2.0
    assert dirty.take(timeout=0) == set()


def test_a_steady_stream_is_handed_out_by_the_maximum_delay() -> None:
    dirty = Debouncer(holdoff_s=0.2, max_holdoff_s=0.4)
    stop = threading.Event()

    def stream() -> None:
        while not stop.wait(0.02):  # never quiet for the hold-off
            dirty.add(["shop/busy"])

    feeder = threading.Thread(target=stream)
    dirty.add(["shop/before"])
    assert dirty.take(timeout=1.0) == {"shop/before"}  # at once; what follows is a burst
    began = time.monotonic()
    dirty.add(["shop/first"])
    feeder.start()
    try:
        assert dirty.take(timeout=1.0) >= {"shop/first", "shop/busy"}
        assert 0.3 <= time.monotonic() - began < 3.0  # the stream alone: never
    finally:
        stop.set()
        feeder.join()
