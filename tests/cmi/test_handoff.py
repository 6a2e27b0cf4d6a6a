"""Every revision, whoever wrote it, is announced to each LB node's queue (L7 needs no task)."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import replace
from typing import Any

from cmi.handoff import Handoff
from devbed.process import wait_until
from devbed.redis import RedisServer
from slb import config
from slb.model import AddressPool, NodeGroup
from slb.pipeline import make_app
from slb.storage.announce import Announced, Announcements
from slb.storage.store import Store


def queued(store: Store, queue: str) -> list[dict[str, Any]]:
    """The apply tasks waiting in a Celery queue on the Redis broker, oldest first."""
    raw = store.redis.lrange(f"{store.prefix}:celery:{queue}", 0, -1)
    messages = [json.loads(m) for m in reversed(raw)]
    return [json.loads(base64.b64decode(m["body"]))[1] for m in messages]


def test_revisions_become_apply_tasks_per_node(redis_server: RedisServer, store: Store) -> None:
    settings = config.load(environ={})
    settings = replace(
        settings, redis=replace(settings.redis, url=redis_server.url, prefix=store.prefix)
    )
    app = make_app(settings, include_tasks=False)
    nodes = [
        {"name": "lb1", "address": "198.18.255.15"},
        {"name": "lb2", "address": "198.18.255.16"},
    ]
    group = NodeGroup.model_validate({"name": "edge", "nodes": nodes})
    store.put(group)
    handoff = Handoff(store, app)
    stop = threading.Event()
    thread = threading.Thread(target=handoff.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: len(queued(store, "l4.lb1")) == 1, 10, "the current revision announced")
        for i in range(50):  # a burst: announced in a few batches, not 50 times
            store.put(AddressPool.model_validate({"name": f"p{i}", "cidrs": ["198.18.0.0/24"]}))
        final = store.revision()
        wait_until(lambda: handoff.announced == final, 10, "the burst announced")
    finally:
        stop.set()
        thread.join()
    lb1, lb2 = (queued(store, q) for q in ("l4.lb1", "l4.lb2"))
    # No worker runs: each queue holds the one task sent first; it will take the newest
    # revision announced since when it runs.
    assert [m["node"] for m in lb1 + lb2] == ["lb1", "lb2"]
    assert Announcements(store).take("lb1") == Announced(final, force=False)
    assert not store.redis.exists(f"{store.prefix}:celery:l7"), "the L7 tier needs no task"


def test_an_offline_nodes_queue_holds_one_task_after_a_day_of_reassertions(
    redis_server: RedisServer, store: Store
) -> None:
    settings = config.load(environ={})
    settings = replace(
        settings, redis=replace(settings.redis, url=redis_server.url, prefix=store.prefix)
    )
    handoff = Handoff(store, make_app(settings, include_tasks=False))
    store.put(NodeGroup.model_validate({"name": "edge", "nodes": [
        {"name": "lb1", "address": "198.18.255.15"}]}))  # fmt: skip
    day = 24 * 3600 // settings.celery.reassert_s
    for beat in range(day):  # a day of re-assertions, time compressed; a revision now and then
        if beat % 100 == 0:
            store.put(AddressPool.model_validate({"name": f"p{beat}", "cidrs": ["198.18.0.0/24"]}))
        handoff.announce(store.revision(), force=True)
    assert store.redis.llen(f"{store.prefix}:celery:l4.lb1") == 1
    assert Announcements(store).take("lb1") == Announced(store.revision(), force=True)
    assert Announcements(store).take("lb1").force is False  # taken once
