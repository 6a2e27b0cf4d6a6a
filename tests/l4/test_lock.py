"""One agent per LB node: the node lock in a real Redis."""

from __future__ import annotations

import time

import pytest

from l4.ownership import AgentError, NodeLock
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
