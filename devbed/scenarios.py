"""Scenarios the end-to-end tests assert on and `bench/pipeline.py` measures."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from devbed import demo
from devbed.platform import LAB_GROUP, LAB_NODE, DevPlatform
from devbed.process import wait_until
from slb.model import parse
from slb.snapshot import Put
from slb.storage.status import StatusBoard
from slb.taskmetrics import applies_key

OPERATOR = {"kind": "Operator", "name": "e2e"}


@dataclass(frozen=True)
class Burst:
    vip: str
    first_port: int
    revisions: int
    last_revision: int
    applies: int  # how many applies lb1 ran for the whole burst
    seconds: float  # from the first write to lb1 serving the last revision

    @property
    def final_target(self) -> str:
        return f"{self.vip}:{self.first_port + self.revisions - 1}"


def burst_of_revisions(platform: DevPlatform, revisions: int = 1000) -> Burst:
    """`revisions` writes in a row, each moving one TCP listener on node group `lab` to the
    next port, each its own revision; returns once lb1 serves the last one."""
    store = platform.store()
    vip = str(ipaddress.ip_network(platform.vip_cidr).network_address + 100)
    store.put(parse("LoadBalancer", {"name": "burst", "vip": vip, "node_group": LAB_GROUP,
                                     "owner": OPERATOR,
                                     "allowed_namespaces": [demo.NAMESPACE]}))  # fmt: skip
    first_port = 20000

    def listener(port: int) -> Put:
        return Put(parse("Listener", {
            "name": "burst", "load_balancer": "burst", "protocol": "TCP", "port": port,
            "selector": {"match_labels": {"app": "tcp-echo"}}, "target_port": "main",
            "owner": OPERATOR,
        }))  # fmt: skip

    counter = applies_key(store.prefix, "l4", LAB_NODE)
    before = int(store.redis.get(counter) or 0)
    began = time.monotonic()
    last = 0
    for i in range(revisions):
        last = store.apply([listener(first_port + i)])

    def converged() -> bool:
        status = StatusBoard(store).all("l4").get(LAB_NODE)
        return status is not None and status.revision >= last

    wait_until(converged, 120, f"{LAB_NODE} at revision {last}", interval=0.1)
    seconds = time.monotonic() - began
    time.sleep(1.0)  # tasks still queued for older revisions must not count as applies
    applies = int(store.redis.get(counter) or 0) - before
    return Burst(vip, first_port, revisions, last, applies, seconds)


def remove_burst(platform: DevPlatform) -> None:
    store = platform.store()
    store.delete("Listener", "burst")
    store.delete("LoadBalancer", "burst")
