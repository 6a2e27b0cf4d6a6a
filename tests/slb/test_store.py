"""The Redis store against a real redis-server: atomic, revisioned, followable, durable."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from devbed.redis import RedisServer, lose
from slb.model import AddressPool, LoadBalancer, Owner, OwnerKind, Service
from slb.snapshot import Delete, Put
from slb.storage.store import (
    CompactedError,
    ConflictError,
    Fence,
    FencedError,
    RewoundError,
    Store,
)

OPERATOR = Owner(kind=OwnerKind.OPERATOR, name="alice")


def pool(name: str, cidr: str = "198.18.0.0/24") -> AddressPool:
    return AddressPool.model_validate({"name": name, "cidrs": [cidr]})


def counter(value: int, name: str = "counter") -> Service:
    """A Service whose label carries a number: a convenient object to race on."""
    return Service(namespace="race", name=name, load_balancer="lb", labels={"n": str(value)})


def test_writes_get_strictly_increasing_revisions(store: Store) -> None:
    assert store.revision() == 0
    first = store.put(pool("a"))
    second = store.put(pool("b"))
    third = store.delete("AddressPool", "a")
    assert 0 < first < second < third == store.revision()
    stored = store.get(AddressPool, "b")
    assert stored is not None
    assert stored.revision == second
    assert stored.obj == pool("b")
    assert store.get(AddressPool, "a") is None


def test_a_write_that_changes_nothing_makes_no_revision(store: Store) -> None:
    rev = store.put(pool("a"))
    assert store.put(pool("a")) == rev
    assert store.delete("AddressPool", "missing") == rev
    assert [c.revision for c in store.changes(0)] == [rev]


def test_optimistic_concurrency_conflicts_are_clear_errors(store: Store) -> None:
    rev = store.put(pool("a"), expect=0)
    with pytest.raises(ConflictError, match="is at revision") as raised:
        store.put(pool("a", "198.18.1.0/24"), expect=0)
    assert (raised.value.expected, raised.value.actual) == (0, rev)
    with pytest.raises(ConflictError, match="does not exist"):
        store.put(pool("b"), expect=rev)
    store.put(pool("a", "198.18.1.0/24"), expect=rev)
    with pytest.raises(ConflictError):
        store.delete("AddressPool", "a", expect=rev)


def test_a_failed_transaction_writes_nothing(store: Store) -> None:
    store.put(pool("a"))
    before = store.snapshot()
    with pytest.raises(ConflictError):
        store.apply([Put(pool("b")), Put(pool("c")), Delete("AddressPool", "a", expect=999)])
    after = store.snapshot()
    assert after == before


def test_changes_follow_from_a_revision(store: Store) -> None:
    r1 = store.put(pool("a"), who="alice")
    r2 = store.apply([Put(pool("b")), Delete("AddressPool", "a")], who="bob")
    changes = store.changes(0)
    assert [c.revision for c in changes] == [r1, r2]
    assert changes[0].ops == (("put", "AddressPool", "a"),)
    assert changes[1].ops == (("put", "AddressPool", "b"), ("delete", "AddressPool", "a"))
    assert changes[1].meta == {"who": "bob"}
    assert store.changes(r1) == changes[1:]
    assert store.changes(r2) == []


def test_a_blocking_read_of_changes_wakes_on_a_commit(store: Store) -> None:
    start = store.revision()
    writer = threading.Timer(0.2, lambda: store.put(pool("late")))
    writer.start()
    began = time.monotonic()
    batch = store.changes(start, block_ms=2000)
    assert time.monotonic() - began < 1.5
    writer.join()  # its reply read before the test's client closes
    assert [op for c in batch for op in c.ops] == [("put", "AddressPool", "late")]


def test_advancing_past_a_batch_gives_the_state_a_new_snapshot_reads(store: Store) -> None:
    store.apply([Put(pool("kept")), Put(counter(1))])
    start = store.snapshot()
    store.put(counter(2))
    store.put(pool("added"))
    store.apply([Delete("Service", "race/counter"), Put(counter(3, "other"))])
    batch = store.changes(start.revision)
    assert len(batch) == 3
    moved = store.advance(start, batch)
    assert moved.revision == store.revision()
    assert moved == store.snapshot()
    # Objects the batch did not touch are the very same objects.
    assert moved.objects["AddressPool"]["kept"] is start.objects["AddressPool"]["kept"]


def test_a_snapshot_of_some_kinds_advances_as_one_of_those_kinds(store: Store) -> None:
    store.put(pool("a"))
    start = store.snapshot(kinds=["Service"])
    store.apply([Put(pool("b")), Put(counter(1))])
    moved = store.advance(start, store.changes(start.revision))
    assert moved == store.snapshot(kinds=["Service"])
    assert set(moved.objects) == {"Service"}


def test_a_trimmed_stream_asks_for_a_new_snapshot(redis_client: redis.Redis[bytes]) -> None:
    store = Store(redis_client, prefix="trim-test", stream_length=10)
    for i in range(300):
        store.put(counter(i))
    with pytest.raises(CompactedError) as raised:
        store.changes(1)
    assert raised.value.oldest > 2
    snapshot = store.snapshot()
    assert snapshot.revision == 300
    assert store.changes(snapshot.revision) == []


def _race(url: str, prefix: str, increments: int) -> int:
    """Increment the counter with read-modify-write and optimistic retries."""
    store = Store(redis.Redis.from_url(url), prefix=prefix)
    conflicts = 0
    for _ in range(increments):
        while True:
            current = store.get(Service, "race/counter")
            assert current is not None
            value = int(current.obj.labels["n"])
            try:
                store.put(counter(value + 1), expect=current.revision)
                break
            except ConflictError:
                conflicts += 1
    return conflicts


def test_concurrent_threads_never_lose_an_update(store: Store, redis_server: RedisServer) -> None:
    store.put(counter(0))
    with ThreadPoolExecutor(8) as pool_:
        conflicts = sum(pool_.map(lambda _: _race(redis_server.url, store.prefix, 50), range(8)))
    final = store.get(Service, "race/counter")
    assert final is not None
    assert final.obj.labels["n"] == "400"
    assert conflicts > 0, "the threads never raced; the test proves nothing"
    revisions = [c.revision for c in store.changes(0)]
    assert revisions == list(range(1, 402))


def test_concurrent_processes_never_lose_an_update(store: Store, redis_server: RedisServer) -> None:
    store.put(counter(0))
    with multiprocessing.get_context("spawn").Pool(4) as procs:
        conflicts = sum(procs.starmap(_race, [(redis_server.url, store.prefix, 100)] * 4))
    final = store.get(Service, "race/counter")
    assert final is not None
    assert final.obj.labels["n"] == "400"
    assert conflicts > 0
    assert store.revision() == 401


def test_a_reader_never_sees_half_a_write(store: Store) -> None:
    """A writer always changes two objects together; readers must see them equal."""
    stop = threading.Event()
    torn: list[tuple[str, str]] = []
    reads = 0

    def write() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            i += 1
            store.apply([Put(counter(i, "left")), Put(counter(i, "right"))])

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            snap = store.snapshot(kinds=["Service"])
            left, right = snap.get(Service, "race/left"), snap.get(Service, "race/right")
            reads += 1
            if (left is None) != (right is None) or (
                left and right and left.labels != right.labels
            ):
                torn.append((str(left), str(right)))

    writer = threading.Thread(target=write)
    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in (writer, *readers):
        t.start()
    writer.join(timeout=60)
    stop.set()
    for t in readers:
        t.join()
    assert reads > 50
    assert torn == []


def test_snapshot_revision_matches_its_contents(store: Store) -> None:
    for i in range(20):
        store.put(pool(f"p{i}"))
    snap = store.snapshot()
    assert snap.revision == 20
    assert max(s.revision for s in snap.of(AddressPool).values()) == snap.revision
    assert snap.of(LoadBalancer) == {}


def test_desired_state_survives_a_redis_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer(tmp_path_factory.mktemp("aof"), fsync="always").start()
    try:
        store = Store(server.client(), prefix="durable")
        for i in range(50):
            store.put(pool(f"p{i}"))
        before = store.snapshot()
        server.process.kill()  # a crash, not a clean shutdown: only the AOF can bring it back
        server.start()
        store = Store(server.client(), prefix="durable")
        assert store.snapshot() == before
        assert store.put(pool("after")) == before.revision + 1
    finally:
        server.stop()


def test_keys_stay_under_the_prefix(store: Store, redis_client: redis.Redis[bytes]) -> None:
    store.put(pool("a"))
    keys = {k.decode() for k in redis_client.scan_iter(match="*")}
    mine = {k for k in keys if k.startswith(store.prefix + ":")}
    assert mine == {
        f"{store.prefix}:revision",
        f"{store.prefix}:doc:AddressPool",
        f"{store.prefix}:rev:AddressPool",
        f"{store.prefix}:changes",
        f"{store.prefix}:store-id",
    }


def test_the_first_write_gives_the_store_an_identity_that_every_change_carries(
    store: Store,
) -> None:
    assert store.snapshot().store_id is None
    store.put(pool("a"))
    identity = store.snapshot().store_id
    assert identity is not None
    store.put(pool("b"))
    assert {c.store_id for c in store.changes(0)} == {identity}
    assert store.identity() == identity
    assert lose(store)  # emptied, as by FLUSHALL
    store.put(pool("c"))
    assert store.snapshot().store_id not in (None, identity)


def test_a_store_behind_its_reader_says_so(store: Store, redis_client: redis.Redis[bytes]) -> None:
    for name in "abc":
        store.put(pool(name))
    redis_client.set(store.key("revision"), 1)  # as a restore from an older copy leaves it
    with pytest.raises(RewoundError, match="revision 1, behind 3"):
        store.changes(3)


def test_cmi_marks_a_store_synced_only_if_it_is_still_that_store(
    store: Store, redis_client: redis.Redis[bytes]
) -> None:
    identity = store.identity()
    store.mark_syncing(identity)
    assert store.snapshot().syncing == identity
    store.put(pool("a"))
    synced = store.mark_synced(identity, store.revision())
    assert synced is not None
    snapshot = store.snapshot()
    assert (snapshot.synced, snapshot.syncing) == (synced, None)
    redis_client.delete(store.key("store-id"))
    store.put(pool("b"))  # another store now
    assert store.mark_synced(identity, store.revision()) is None


def test_a_deposed_leader_cannot_write(store: Store) -> None:
    old, new = Fence("cmi", 3), Fence("cmi", 4)
    store.apply([Put(pool("a"))], fence=old)
    store.apply([Put(pool("b"))], fence=new)
    with pytest.raises(FencedError, match="token 3 is older than 4"):
        store.apply([Put(pool("c"))], fence=old)
    assert store.get(AddressPool, "c") is None
    store.apply([Put(pool("c"))], fence=new)
    store.apply([Put(pool("d"))])  # unfenced writers (operators) are not affected
