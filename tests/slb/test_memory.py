"""The garbage collector's pauses are counted and the slow ones logged."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from slb.memory import CollectionWatch


def test_a_slow_collection_is_logged_with_its_generation(caplog: pytest.LogCaptureFixture) -> None:
    watch = CollectionWatch(slow_s=0.0).install()  # every pause counts as slow
    try:
        with caplog.at_level(logging.WARNING, logger="slb.memory"):
            gc.collect(2)
    finally:
        watch.uninstall()
    assert watch.pauses >= 1
    assert watch.slow == watch.pauses
    assert watch.longest_s > 0
    assert any("generation 2 paused the process" in r.getMessage() for r in caplog.records)
    counted = watch.pauses
    gc.collect(2)
    assert watch.pauses == counted  # uninstalled: no longer counting


def test_quick_collections_are_counted_but_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    watch = CollectionWatch(slow_s=60.0).install()
    try:
        with caplog.at_level(logging.WARNING, logger="slb.memory"):
            gc.collect(0)
    finally:
        watch.uninstall()
    assert (watch.pauses >= 1, watch.slow) == (True, 0)
    assert not caplog.records


def test_frozen_survivors_are_not_walked_again_yet_garbage_is_still_freed() -> None:
    watch = CollectionWatch(freeze_survivors=True).install()
    state = [{"n": [i]} for i in range(50_000)]  # a daemon's long-lived state
    item = _Item()
    gone = weakref.ref(item)
    try:
        gc.collect(2)
        assert gc.get_freeze_count() >= 100_000
        assert len(gc.get_objects(generation=2)) < 1_000  # the next full one walks little
        del item  # frozen objects go by reference counting as ever
        assert gone() is None
        ring: list[object] = []
        ring.append(ring)  # a garbage cycle made after the freeze is collected
        del ring
        assert gc.collect(2) >= 1
        assert len(state) == 50_000
    finally:
        watch.uninstall()
        gc.unfreeze()


class _Item:
    """An object a weak reference can follow."""
