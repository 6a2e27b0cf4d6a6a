"""The xDS server's view of the store: kept current by reading only what changed."""

from __future__ import annotations

import threading

from devbed.l7harness import listener, load_balancer, service
from l7.feed import follow
from slb.model import Backend
from slb.snapshot import Snapshot
from slb.storage.store import Delete, Put, Store


def documents(snapshot: Snapshot) -> dict[str, dict[str, object]]:
    return {
        kind: {key: (s.obj, s.revision) for key, s in by_key.items()}
        for kind, by_key in snapshot.objects.items()
        if by_key
    }


def test_applying_a_batch_gives_the_same_state_as_a_new_snapshot(store: Store) -> None:
    store.apply([Put(load_balancer("lb", "198.18.0.1")), Put(service("a", [("198.18.1.1", 80)]))])
    start = store.snapshot()
    store.put(service("a", [("198.18.1.1", 80), ("198.18.1.2", 80)]))
    store.put(listener("a", "HTTP", 80))
    store.apply([Delete("Service", "tests/a"), Put(service("b", [("198.18.1.3", 80)]))])
    batch = store.changes(start.revision)
    assert len(batch) == 3
    moved = store.advance(start, batch)
    assert moved.revision == store.revision()
    assert documents(moved) == documents(store.snapshot())
    # Objects the batch did not touch are the very same objects.
    assert moved.objects["LoadBalancer"]["lb"] is start.objects["LoadBalancer"]["lb"]


def test_follow_yields_the_state_then_each_batch_and_survives_trimming(store: Store) -> None:
    store.put(load_balancer("lb", "198.18.0.1"))
    stop = threading.Event()
    updates = follow(store, stop, block_ms=50)
    first = next(updates)
    assert first is not None
    assert first.revision == 1
    store.put(service("a", [("198.18.1.1", 80)]))
    second = next(u for u in updates if u is not None)
    assert second.revision == 2
    # The stream is trimmed past what the follower has seen: it starts over from a snapshot.
    for i in range(5):
        store.put(service("a", [("198.18.1.1", 80 + i)]))
    store.redis.xtrim(store.key("changes"), maxlen=1)
    third = next(u for u in updates if u is not None)
    assert third.revision == store.revision()
    svc = third.objects["Service"]["tests/a"].obj
    assert svc.backends["grpc"][0] == Backend(address="198.18.1.1", port=84)  # type: ignore[attr-defined]
    stop.set()
