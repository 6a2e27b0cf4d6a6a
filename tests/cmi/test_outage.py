"""Redis goes away under a running leader: its threads wait it out, nothing is lost.

Each test runs a redis-server of its own, since it stops and restarts it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from cmi.controller import Controller
from cmi.handoff import Handoff
from cmi.k8s.client import KubeClient
from devbed.process import wait_until
from devbed.redis import RedisServer
from slb import config
from slb.config import CmiSettings
from slb.model import AddressPool, NodeGroup
from slb.pipeline import make_app
from slb.storage.store import Store
from tests.cmi.conftest import POOL, Running
from tests.cmi.test_handoff import queued
from tests.cmi.test_leader import _exposed, expose

OUTAGE_S = 3.0
"""Longer than the controller's readiness period (1 s) and every retry interval."""


def test_the_controller_outlives_a_redis_restart(
    admin: KubeClient, cmi_kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    store = Store(server.client(), prefix="outage")
    settings = CmiSettings(namespace=namespace, pool_cidrs=POOL, holdoff_ms=50, resync_s=3600,
                           endpoint_slices_from="*")  # fmt: skip
    controller = Controller(KubeClient.from_kubeconfig(str(cmi_kubeconfig)), store, settings,
                            identity="test-cmi")  # fmt: skip
    running = Running(controller, store).start()
    try:
        expose(admin, namespace, "before")
        wait_until(lambda: _exposed(store, namespace, "before"), 30, "exposed before the outage")

        server.stop()
        expose(admin, namespace, "during")  # seen by the informer, not writable yet
        time.sleep(OUTAGE_S)
        assert running.thread.is_alive(), "the controller died while Redis was down"
        server.start()

        wait_until(lambda: _exposed(store, namespace, "during"), 30, "exposed after the outage")
        expose(admin, namespace, "after")
        wait_until(lambda: _exposed(store, namespace, "after"), 30, "exposed once Redis is back")
        assert _exposed(store, namespace, "before")  # the AOF kept it
        assert running.thread.is_alive()
    finally:
        running.stop()
        server.stop()


def test_the_handoff_outlives_a_broker_outage(tmp_path: Path) -> None:
    """The broker may be down while the store is up (or go down between reading a batch
    and announcing it): the batch is announced once the broker is back, not dropped."""
    store_server = RedisServer(tmp_path / "store").start()
    broker_server = RedisServer(tmp_path / "broker").start()
    store = Store(store_server.client(), prefix="outage")
    settings = config.load(environ={})
    broker_settings = replace(settings.redis, url=broker_server.url, prefix=store.prefix)
    broker = Store(broker_server.client(), prefix=store.prefix)  # to read the queues
    store.put(NodeGroup.model_validate({"name": "edge", "nodes": [
        {"name": "lb1", "address": "198.18.255.15"}]}))  # fmt: skip
    handoff = Handoff(store, make_app(replace(settings, redis=broker_settings),
                                      include_tasks=False))  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=handoff.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: len(queued(broker, "l4.lb1")) == 1, 10, "the current revision announced")

        broker_server.stop()
        store.put(AddressPool.model_validate({"name": "p1", "cidrs": ["198.18.0.0/24"]}))
        final = store.revision()
        time.sleep(OUTAGE_S)
        assert thread.is_alive(), "the handoff died while the broker was down"
        assert handoff.announced < final
        broker_server.start()

        wait_until(lambda: handoff.announced == final, 30, "the held-up revision announced")
        assert queued(broker, "l4.lb1")[-1] == {"node": "lb1", "revision": final, "force": False}
    finally:
        stop.set()
        thread.join(timeout=30)
        store_server.stop()
        broker_server.stop()
