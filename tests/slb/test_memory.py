"""The garbage collector's pauses are counted and the slow ones logged."""

from __future__ import annotations

import gc
import logging

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
