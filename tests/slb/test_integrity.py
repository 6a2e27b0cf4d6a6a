"""The fail-static rule, as pure logic: which snapshots a consumer may apply."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from slb.integrity import Applied, AppliedRecord, Guard, applied_from, check, removal_held
from slb.snapshot import Snapshot, Synced

SERVED = Applied(store_id="a", revision=50, synced_at=100.0)


def snap(revision: int, store_id: str | None = "a", synced: Synced | None = None,
         syncing: str | None = None) -> Snapshot:  # fmt: skip
    return Snapshot(revision, store_id=store_id, synced=synced, syncing=syncing)


@pytest.mark.parametrize(
    ("snapshot", "applied", "held"),
    [
        (snap(51), SERVED, None),  # the store moved on
        (snap(50), SERVED, None),
        (snap(3), None, None),  # a consumer that serves nothing yet has nothing to lose
        (snap(0, store_id=None), None, "the store is empty"),
        (snap(0, store_id=None), SERVED, "the store is empty"),
        (snap(9, syncing="a"), SERVED, "cmi is rebuilding store a"),
        (snap(9, syncing="a"), None, "cmi is rebuilding store a"),
        (snap(60, syncing="old"), SERVED, None),  # a stale mark of another store
        (snap(60, store_id="b"), SERVED, "the store is not the one served from"),
        (snap(60, store_id="b", synced=Synced("a", 50, 200.0)), SERVED, "not the one"),
        (snap(6, store_id="b", synced=Synced("b", 6, 200.0)), SERVED, None),  # rebuilt by cmi
        (snap(40), SERVED, "the store went back to revision 40 from 50"),
        (snap(40, synced=Synced("a", 30, 100.0)), SERVED, "went back"),  # the backup's own mark
        (snap(40, synced=Synced("a", 40, 300.0)), SERVED, None),  # cmi rebuilt it since
    ],
)
def test_what_a_consumer_may_apply(
    snapshot: Snapshot, applied: Applied | None, held: str | None
) -> None:
    why = check(snapshot, applied)
    if held is None:
        assert why is None
    else:
        assert why is not None
        assert held in why


def test_a_consumer_remembers_the_newest_mark_of_its_store() -> None:
    first = applied_from(snap(5, synced=Synced("a", 5, 100.0)), None)
    assert first == Applied("a", 5, 100.0)
    # A later snapshot read without the mark (advanced by changes) keeps the one it had.
    assert applied_from(snap(9), first) == Applied("a", 9, 100.0)
    assert applied_from(snap(2, store_id="b", synced=Synced("b", 2, 150.0)), first) == Applied(
        "b", 2, 150.0
    )


def test_the_guard_raises_and_clears_its_alarm_once_each(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard("l4 agent of lb-1")
    assert guard.admit(snap(50))
    guard.applied_now(snap(50))
    caplog.set_level(logging.WARNING)
    assert not guard.admit(snap(0, store_id=None))
    assert not guard.admit(snap(0, store_id=None))
    assert guard.alarm is not None
    assert guard.alarm.startswith("the store is empty")
    assert guard.applied == Applied("a", 50, 0.0)  # holding: nothing new remembered
    assert guard.admit(snap(3, store_id="b", synced=Synced("b", 3, 10.0)))
    assert guard.alarm is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "keeping the last good state: the store is empty" in messages[0]
    assert "can be trusted again" in messages[1]


@pytest.mark.parametrize(
    ("snapshot", "served", "kept", "held"),
    [
        (snap(60), 10, 0, False),  # a healthy store's reductions apply at once
        (snap(6, store_id="b", synced=Synced("b", 6, 200.0)), 10, 5, False),  # half: allowed
        (snap(6, store_id="b", synced=Synced("b", 6, 200.0)), 10, 4, True),
        (snap(6, store_id="b", synced=Synced("b", 6, 200.0)), 1, 0, True),
        (snap(40, synced=Synced("a", 40, 300.0)), 4, 1, True),  # rewound, rebuilt by cmi
        (snap(40, synced=Synced("a", 40, 300.0, adopted=True)), 4, 1, False),  # adopted
        (snap(40, synced=Synced("a", 40, 90.0, adopted=True)), 4, 1, True),  # the backup's mark
        (snap(6, store_id="b", synced=Synced("b", 6, 200.0)), 0, 0, False),
    ],
)
def test_a_rebuilt_store_may_not_take_more_than_half_without_an_operator(
    snapshot: Snapshot, served: int, kept: int, held: bool
) -> None:
    why = removal_held(snapshot, SERVED, served, kept, what="IPVS services")
    assert (why is not None) == held
    if why is not None:
        assert f"would take {served - kept} of the {served} IPVS services" in why


def test_the_guard_asks_what_would_be_removed_only_of_a_rebuilt_store() -> None:
    asked: list[int] = []

    def removal() -> tuple[int, int]:
        asked.append(1)
        return 3, 0

    guard = Guard("xds", serves="L7 listeners")
    assert guard.admit(snap(50), removal)
    guard.applied_now(snap(50, synced=Synced("a", 50, 100.0)))
    assert guard.admit(snap(51), removal)
    assert asked == []
    assert not guard.admit(snap(2, store_id="b", synced=Synced("b", 2, 150.0)), removal)
    assert guard.alarm is not None
    assert "3 of the 3 L7 listeners" in guard.alarm
    assert guard.admit(snap(2, store_id="b", synced=Synced("b", 2, 160.0, adopted=True)), removal)


def test_the_record_on_disk_survives_a_restart_and_a_bad_one_counts_as_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = AppliedRecord(tmp_path / "state" / "xds.applied.json")
    assert record.load() == (None, set())
    record.save(None, {"never"})  # nothing applied yet: nothing to remember
    assert not record.path.exists()
    applied = Applied("s1", 42, 1700000000.5)
    record.save(applied, {"blue/web-b", "blue/web-a"})
    assert AppliedRecord(record.path).load() == (applied, {"blue/web-a", "blue/web-b"})
    later = Applied("s1", 43, 1700000001.0)  # the same names: the names already written
    record.save(later, {"blue/web-a", "blue/web-b"})
    assert AppliedRecord(record.path).load() == (later, {"blue/web-a", "blue/web-b"})
    record.save(later, {"blue/web-a"}, str.upper)  # one gone, and names made by a function
    assert AppliedRecord(record.path).load() == (later, {"BLUE/WEB-A"})
    record.path.write_text('{"applied": {"store_id": "s1"}}')  # cut short by a full disk
    with caplog.at_level(logging.ERROR):
        assert record.load() == (None, set())
    assert "no memory of what was applied" in caplog.text
