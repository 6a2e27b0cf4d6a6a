"""One agent per LB node: the node lock in a real Redis."""

from __future__ import annotations

import time

import pytest

from devbed.process import wait_until
from l4.ownership import AgentError, NodeLock, NodeTakenError
from slb.storage.store import Store


def test_a_second_agent_cannot_take_a_held_node(store: Store) -> None:
    first, second = NodeLock(store, "lb-a"), NodeLock(store, "lb-a")
    first.acquire()
    first.acquire()  # its own lock: taken again
    with pytest.raises(AgentError, match="another l4 agent programs this node"):
        second.acquire()
    assert not second.renew()
    second.release()  # not the holder: nothing happens
    assert first.renew()
    NodeLock(store, "lb-b").acquire()  # other nodes are other locks
    first.release()
    second.acquire()


def test_a_dead_holder_s_lock_expires(store: Store) -> None:
    NodeLock(store, "lb-a", ttl_s=0.2).acquire()
    with pytest.raises(AgentError):
        NodeLock(store, "lb-a").acquire()
    time.sleep(0.3)
    NodeLock(store, "lb-a").acquire()


def test_a_held_lock_outlives_its_expiry_until_released(store: Store) -> None:
    """Renewed from its own thread: an apply longer than the expiry keeps the node."""
    held = NodeLock(store, "lb-a", ttl_s=0.3)
    held.hold()
    time.sleep(1.0)  # over three lifetimes, nothing else renewing it
    with pytest.raises(NodeTakenError):
        NodeLock(store, "lb-a").acquire()
    held.release()
    time.sleep(0.2)  # the keeper stopped: nothing takes it back
    NodeLock(store, "lb-a").acquire()
    assert not held.lost


def test_a_holder_whose_lock_was_taken_knows(store: Store) -> None:
    held = NodeLock(store, "lb-a", ttl_s=0.3)
    held.hold()
    store.redis.set(store.key("l4", "lb-a", "lock"), "another:agent")  # as after a long pause
    wait_until(lambda: held.lost, 2, "the holder notices")
    held.release()  # not the holder any more: the other agent's lock stays
    assert store.redis.get(store.key("l4", "lb-a", "lock")) == b"another:agent"
