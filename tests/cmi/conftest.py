"""cmi under test: the real controller, run as its own least-privilege ServiceAccount."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cmi.controller import Controller
from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI
from devbed.process import wait_until
from slb.config import CmiSettings
from slb.model import Listener, LoadBalancer, Service
from slb.storage.secrets import Keyring
from slb.storage.store import Fence, Store

POOL = "198.18.0.0/24"


@pytest.fixture(scope="session")
def cmi_kubeconfig(kube: KubeAPI) -> Path:
    return kube.cmi_kubeconfig()


@pytest.fixture(scope="session")
def admin(kube: KubeAPI) -> KubeClient:
    return KubeClient.from_kubeconfig(str(kube.kubeconfig))


@pytest.fixture
def namespace(admin: KubeClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    return name


class Running:
    """A controller running in a thread, as the leader would run it."""

    def __init__(self, controller: Controller, store: Store) -> None:
        self.controller, self.store = controller, store
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=controller.run, args=(self.stop_event, Fence("cmi", 1)), daemon=True
        )

    def start(self) -> Running:
        self.thread.start()
        wait_until(lambda: self.controller.reconciles > 0, 30, "cmi's first sync")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=20)

    def owned(self, service_key: str) -> dict[str, Any]:
        """What the store holds for a Service, by kind then key."""
        snapshot = self.store.snapshot()
        out: dict[str, Any] = {"Listener": {}, "Service": {}, "LoadBalancer": {}}
        for cls in (Listener, Service, LoadBalancer):
            for key, stored in snapshot.of(cls).items():
                obj = stored.obj
                owner = obj.key if isinstance(obj, Service) else getattr(obj, "owner").name  # noqa: B009
                if owner == service_key:
                    out[cls.kind][key] = obj
        return out


@pytest.fixture
def cmi(
    store: Store, kube: KubeAPI, cmi_kubeconfig: Path, namespace: str
) -> Iterator[Callable[..., Running]]:
    """Start cmi on this test's namespace and store; settings can be overridden."""
    started: list[Running] = []

    def start(keyring: Keyring | None = None, **overrides: Any) -> Running:
        settings = replace(
            CmiSettings(
                namespace=namespace, pool_cidrs=POOL, holdoff_ms=50, max_holdoff_ms=300,
                resync_s=3600, release_grace_s=60, vip_record="",
                endpoint_slices_from="*",  # the test bed has no EndpointSlice controller
            ),
            **overrides,
        )  # fmt: skip
        client = KubeClient.from_kubeconfig(str(cmi_kubeconfig))
        controller = Controller(client, store, settings, identity="test-cmi", keyring=keyring)
        running = Running(controller, store).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# -- building Kubernetes objects ------------------------------------------------------------


def service_body(
    name: str,
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    type_: str = "LoadBalancer",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "type": type_,
            "ports": ports or [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}],
            **({"allocateLoadBalancerNodePorts": False} if type_ == "LoadBalancer" else {}),
            **spec,
        },
    }


def slice_body(service: str, name: str, addresses: list[str], **conditions: bool) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True, **conditions}, "nodeName": "n1"}
            for a in addresses
        ],
    }
