"""Desired-state objects for l4 tests, written to a real store."""

from __future__ import annotations

from typing import Any

from slb.model import Listener, LoadBalancer, NodeGroup, Service, StoredObject
from slb.snapshot import Put
from slb.storage.store import Store

OPERATOR = {"kind": "Operator", "name": "tests"}


def node_group(*nodes: tuple[str, str], name: str = "default") -> NodeGroup:
    return NodeGroup.model_validate(
        {"name": name, "nodes": [{"name": n, "address": a} for n, a in nodes]}
    )


def load_balancer(vip: str, name: str = "public", group: str = "default") -> LoadBalancer:
    return LoadBalancer.model_validate(
        {"name": name, "vip": vip, "node_group": group, "owner": OPERATOR,
         "allowed_namespaces": ["lab"]}
    )  # fmt: skip


def listener(
    name: str, port: int, protocol: str = "TCP", app: str = "web", lb: str = "public", **extra: Any
) -> Listener:
    data: dict[str, Any] = {
        "name": name,
        "load_balancer": lb,
        "protocol": protocol,
        "port": port,
        "selector": {"match_labels": {"app": app}},
        "target_port": "main",
        "owner": OPERATOR,
        "health_check": None,
    }
    return Listener.model_validate({**data, **extra})


def service(
    name: str,
    backends: list[tuple[str, int, int]],
    app: str = "web",
    lb: str = "public",
    protocol: str = "TCP",
) -> Service:
    """A Service whose port `main` has these (address, port, weight) backends."""
    return Service.model_validate(
        {
            "namespace": "lab",
            "name": name,
            "labels": {"app": app},
            "load_balancer": lb,
            "ports": [{"name": "main", "port": 1000, "protocol": protocol}],
            "backends": {"main": [{"address": a, "port": p, "weight": w} for a, p, w in backends]},
        }
    )


def put(store: Store, *objects: StoredObject) -> int:
    return store.apply([Put(obj) for obj in objects])
