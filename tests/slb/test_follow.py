"""Following the store against a real redis-server: polled, iterated, across trims and outages."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devbed.redis import RedisServer, lose
from slb.model import AddressPool, Service
from slb.snapshot import Delete, Put
from slb.storage.follow import Follower, Step
from slb.storage.store import CompactedError, Store


def pool(name: str, cidr: str = "198.18.0.0/24") -> AddressPool:
    return AddressPool.model_validate({"name": name, "cidrs": [cidr]})


def service(name: str, n: int = 0) -> Service:
    return Service(namespace="tests", name=name, load_balancer="lb", labels={"n": str(n)})


def test_the_first_step_is_a_snapshot_then_each_step_moves_past_what_changed(
    store: Store,
) -> None:
    store.apply([Put(pool("kept")), Put(service("a"))])
    follower = Follower(store)
    first = follower.poll()
    assert first.changes is None  # a fresh snapshot: everything may have changed
    assert first.snapshot == store.snapshot()

    assert follower.poll().quiet
    store.put(service("a", 1))
    store.apply([Delete("Service", "tests/a"), Put(service("b"))])
    step = follower.poll()
    assert step.changes is not None
    assert [c.revision for c in step.changes] == [2, 3]
    assert step.revision == store.revision()
    assert step.snapshot == store.snapshot()
    # What did not change is the very same object: downstream caches compare by identity.
    kept = step.snapshot.objects["AddressPool"]["kept"]
    assert kept is first.snapshot.objects["AddressPool"]["kept"]
    assert follower.poll().snapshot is step.snapshot


def test_a_poll_does_not_wait_and_a_followed_step_wakes_on_a_commit(store: Store) -> None:
    follower = Follower(store)
    stop = threading.Event()
    steps = follower.follow(stop, block_ms=3000)
    assert next(steps).changes is None
    began = time.monotonic()
    assert follower.poll().quiet
    assert time.monotonic() - began < 1.0  # a blocking read would take 3 s
    writer = threading.Timer(0.3, lambda: store.put(pool("late")))
    writer.start()
    began = time.monotonic()
    step = next(steps)
    assert 0.2 < time.monotonic() - began < 2.5
    writer.join()  # its reply read before the test's client closes
    assert step.changes is not None
    assert [op for c in step.changes for op in c.ops] == [("put", "AddressPool", "late")]
    stop.set()
    assert list(steps) == []


def test_a_quiet_step_comes_after_block_ms(store: Store) -> None:
    stop = threading.Event()
    steps = Follower(store).follow(stop, block_ms=100)
    next(steps)
    began = time.monotonic()
    assert next(steps).quiet
    assert 0.05 < time.monotonic() - began < 2.0
    stop.set()


def test_a_follower_left_behind_the_trim_point_catches_up_from_a_snapshot(store: Store) -> None:
    store = Store(store.redis, prefix=store.prefix, stream_length=10)
    store.put(service("a"))
    follower = Follower(store)
    follower.poll()
    behind = Follower(store, kinds=(), since=store.revision())
    for i in range(300):  # trimming is approximate: whole stream nodes (100 entries) go
        store.put(service("a", i))
    with pytest.raises(CompactedError):  # the stream no longer says what changed
        store.changes(1)

    step = follower.poll()
    assert step.changes is None
    assert step.snapshot == store.snapshot()
    assert step.snapshot.get(Service, "tests/a") == service("a", 299)
    step = behind.poll()
    assert step.changes is None
    assert step.revision == store.revision()
    # Caught up, both go on from the changes again.
    store.put(pool("p"))
    assert [len(f.poll().changes or ()) for f in (follower, behind)] == [1, 1]


def test_more_changes_waiting_than_it_reads_at_once_take_a_fresh_snapshot(store: Store) -> None:
    follower = Follower(store, max_changes=5)
    follower.poll()
    before = follower.snapshot
    for i in range(5):
        store.put(pool(f"p{i}"))
    step = follower.poll()
    assert step.changes is None
    assert step.snapshot == store.snapshot()
    assert step.snapshot is not before
    for i in range(4):
        store.put(pool(f"q{i}"))
    step = follower.poll()
    assert step.changes is not None
    assert len(step.changes) == 4


def test_an_emptied_or_rewound_store_makes_the_follower_read_it_afresh(
    store: Store, redis_client: redis.Redis[bytes]
) -> None:
    store.apply([Put(pool("a")), Put(service("a"))])
    store.put(service("b"))
    follower = Follower(store)
    before = follower.poll().snapshot
    assert before.store_id is not None
    redis_client.set(store.key("revision"), 1)  # restored from an older copy
    step = follower.poll()
    assert (step.changes, step.revision) == (None, 1)
    assert lose(store)  # emptied, then rewritten
    step = follower.poll()
    assert (step.changes, step.snapshot.store_id, step.snapshot.objects["Service"]) == (
        None,
        None,
        {},
    )
    for n in range(3):  # the new store's first writes: followed as changes
        store.put(service("c", n))
    step = follower.poll()
    assert step.changes is not None
    assert [c.revision for c in step.changes] == [1, 2, 3]
    assert step.snapshot == store.snapshot()
    assert step.snapshot.store_id not in (None, before.store_id)


def test_changes_from_another_store_make_the_follower_read_it_afresh(store: Store) -> None:
    store.put(service("a"))
    follower = Follower(store)
    old = follower.poll().snapshot
    assert lose(store)
    for n in range(3):  # the new store goes past the follower before it looks again
        store.put(service("b", n))
    step = follower.poll()
    assert step.changes is None
    assert step.snapshot == store.snapshot()
    assert step.snapshot.store_id != old.store_id


def test_a_follower_of_some_kinds_holds_only_those(store: Store) -> None:
    store.apply([Put(pool("a")), Put(service("a"))])
    follower = Follower(store, kinds=["Service"])
    assert set(follower.poll().snapshot.objects) == {"Service"}
    store.apply([Put(pool("b")), Put(service("b"))])
    step = follower.poll()
    assert step.changes is not None
    assert [op for c in step.changes for op in c.ops] == [
        ("put", "AddressPool", "b"),
        ("put", "Service", "tests/b"),
    ]
    assert step.snapshot == store.snapshot(kinds=["Service"])


def test_a_follower_from_a_revision_follows_no_kinds(store: Store) -> None:
    with pytest.raises(ValueError, match="holds no objects"):
        Follower(store, since=0)
    store.put(pool("a"))
    follower = Follower(store, kinds=(), since=0)
    step = follower.poll()
    assert step.changes is not None
    assert [c.revision for c in step.changes] == [1]
    assert step.snapshot.objects == {}


def test_reset_reads_everything_afresh(store: Store) -> None:
    store.put(pool("a"))
    follower = Follower(store)
    first = follower.poll()
    follower.reset()
    again = follower.poll()
    assert again.changes is None
    assert again.snapshot == first.snapshot
    assert (
        again.snapshot.objects["AddressPool"]["a"] is not first.snapshot.objects["AddressPool"]["a"]
    )


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, since the test stops and restarts it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_redis_restart_is_waited_out(own_redis: RedisServer) -> None:
    store = Store(own_redis.client(), prefix="outage")
    store.put(pool("before"))
    follower = Follower(store, retry_s=0.1)
    stop = threading.Event()
    steps: queue.Queue[Step] = queue.Queue()

    def follow() -> None:
        for step in follower.follow(stop, block_ms=100):
            steps.put(step)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        assert steps.get(timeout=10).changes is None
        own_redis.stop()
        time.sleep(1.0)  # ten retries
        assert thread.is_alive(), "the follower died while Redis was down"
        with pytest.raises(redis.ConnectionError):
            Follower(store).poll()  # a poll leaves the outage to its caller
        own_redis.start()
        store.put(pool("after"))
        while (step := steps.get(timeout=20)).quiet:
            pass
        assert step.changes is not None
        assert [op for c in step.changes for op in c.ops] == [("put", "AddressPool", "after")]
        assert step.snapshot == store.snapshot()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
