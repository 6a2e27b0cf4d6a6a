"""The status board against forged reports: every LB node may write it, so an entry that is
not a report is ignored and said, never raised (issue #14)."""

from __future__ import annotations

import json
import logging

import pytest

from slb.storage.status import MAX_ERROR_CHARS, StatusBoard
from slb.storage.store import Store

FORGED = {
    "not JSON": b"{",
    "a list": b"[1, 2]",
    "a string for the revision": json.dumps(
        {"tier": "l4", "node": "n2", "group": "g", "revision": "7", "updated_at": 1.0}
    ).encode(),
    "another node's name": json.dumps(
        {"tier": "l4", "node": "n1", "group": "g", "revision": 7, "updated_at": 1.0}
    ).encode(),
    "another tier": json.dumps(
        {"tier": "l7", "node": "n5", "group": "g", "revision": 7, "updated_at": 1.0}
    ).encode(),
    "a field missing": json.dumps({"tier": "l4", "node": "n6", "revision": 7}).encode(),
    "not a number": b'{"tier": "l4", "node": "n7", "group": "g", "revision": 1, "updated_at": NaN}',
}


def test_forged_entries_are_ignored_and_said(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    board = StatusBoard(store)
    board.report("l4", "n1", "g", 5)
    for n, raw in enumerate(FORGED.values(), start=2):
        store.redis.set(store.key("l4", f"n{n}", "status"), raw)
        store.redis.sadd(store.key("status", "l4-nodes"), f"n{n}")
    store.redis.sadd(store.key("status", "l4-nodes"), b"\xff\xfe")  # not even UTF-8
    store.redis.set(store.key("l4", "n9", "status"), b"{}")  # not listed
    with caplog.at_level(logging.WARNING):
        reports = board.all("l4")
        assert board.all("l4") == reports  # said once, not at every read
    assert list(reports) == ["n1"]
    assert reports["n1"].revision == 5
    warnings = [r.getMessage() for r in caplog.records if "not a status report" in r.getMessage()]
    assert len(warnings) == len(FORGED)


def test_a_huge_error_is_cut_and_a_bad_beat_is_none(store: Store) -> None:
    board = StatusBoard(store)
    board.report("l7", "envoy-1", "g", 3, error="x" * 1_000_000, error_revision=3)
    assert len(board.all("l7")["envoy-1"].error or "") <= MAX_ERROR_CHARS + 3
    store.redis.set(store.key("status", "cmi"), b'{"identity": 1}')
    assert board.controller() is None
    board.controller_beat("cmi-0", 2, 9)
    beat = board.controller()
    assert beat is not None
    assert (beat.identity, beat.epoch, beat.revision) == ("cmi-0", 2, 9)
