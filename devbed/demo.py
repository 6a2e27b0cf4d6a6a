"""The local platform's two sample apps, exposed by label, and the traffic that proves it.

Both are selector-less Services with EndpointSlices, the Kubernetes way to point a
Service at endpoints the cluster does not run: `demo/grpc-echo` (appProtocol h2c, so an L7
listener on the Envoy of node group `default`) backed by the gRPC samples on the host, and
`demo/tcp-echo` (plain TCP, an IPVS virtual service on the lab VM's node group `lab`)
backed by the TCP pods inside the VM. Objects are written with server-side apply, so
running the demo again changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from cmi.annotation import EXPOSE_LABEL
from cmi.k8s.client import KubeClient

NAMESPACE = "demo"
FIELD_MANAGER = "openslb-demo"
ECHO_WHO = "/openslb.test.Echo/Who"
EXPOSED, PROGRAMMED = "openslb.io/Exposed", "openslb.io/Programmed"


@dataclass(frozen=True)
class SampleApp:
    name: str
    port: int
    endpoints: Sequence[str]  # addresses
    app_protocol: str | None = None
    node_group: str | None = None
    expose: str | None = "true"  # the label's value; None: not exposed (yet)
    target_port: int | None = None  # where the endpoints listen, if not on `port`

    def manifests(self) -> list[dict[str, Any]]:
        annotations = {"openslb.io/node-group": self.node_group} if self.node_group else {}
        labels = {"app": self.name, **({EXPOSE_LABEL: self.expose} if self.expose else {})}
        port: dict[str, Any] = {"name": "main", "port": self.port, "protocol": "TCP"}
        if self.app_protocol:
            port["appProtocol"] = self.app_protocol
        service = {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE,
                         "labels": labels, "annotations": annotations},
            # No selector: the slice below says where the pods are. Type LoadBalancer, as
            # for a cloud LB: only such a Service carries status.loadBalancer.ingress.
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False,
                     "ports": [port]},
        }  # fmt: skip
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{self.name}-1", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": self.name,
                                    "endpointslice.kubernetes.io/managed-by": FIELD_MANAGER}},
            "addressType": "IPv4",
            "ports": [{"name": "main", "port": self.target_port or self.port, "protocol": "TCP",
                       **({"appProtocol": self.app_protocol} if self.app_protocol else {})}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                          for a in self.endpoints],
        }  # fmt: skip
        return [service, endpoint_slice]


@dataclass
class Exposure:
    """What a Service's status says about its load balancer."""

    vip: str | None = None
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def programmed(self) -> bool:
        return self.conditions.get(PROGRAMMED, ("False",))[0] == "True"


def apply(kube: KubeClient, apps: Sequence[SampleApp]) -> None:
    """Create or update the namespace and every app's Service and EndpointSlice."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    ]
    for app in apps:
        objects += app.manifests()
    for body in objects:
        kube.request("PATCH", _path(body), body=body, content_type="application/apply-patch+yaml",
                     query={"fieldManager": FIELD_MANAGER, "force": "true"})  # fmt: skip


def _path(body: dict[str, Any]) -> str:
    name, namespace = body["metadata"]["name"], body["metadata"].get("namespace")
    plural = {"Namespace": "namespaces", "Service": "services", "EndpointSlice": "endpointslices"}
    base = "/api/v1" if body["apiVersion"] == "v1" else f"/apis/{body['apiVersion']}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{plural[body['kind']]}/{name}"


def label(kube: KubeClient, name: str, expose: str | None) -> None:
    """Set (or with None, remove) a Service's `openslb.io/expose` label."""
    kube.request(
        "PATCH", f"/api/v1/namespaces/{NAMESPACE}/services/{name}",
        body={"metadata": {"labels": {EXPOSE_LABEL: expose}}},
        content_type="application/merge-patch+json",
    )  # fmt: skip


def exposure(kube: KubeClient, name: str) -> Exposure:
    status = kube.get(f"/api/v1/namespaces/{NAMESPACE}/services/{name}").get("status") or {}
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    return Exposure(
        vip=ingress[0].get("ip") if ingress else None,
        conditions={
            c["type"]: (c["status"], c["reason"], c["message"])
            for c in status.get("conditions") or []
        },
    )


def wait_programmed(kube: KubeClient, name: str, timeout: float) -> Exposure:
    """The Service's exposure once its VIP is programmed on every node it needs."""
    deadline = time.monotonic() + timeout
    while True:
        now = exposure(kube, name)
        if now.vip and now.programmed():
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAMESPACE}/{name} is not programmed after {timeout:.0f} s: {now}")
        time.sleep(0.2)


def grpc_who(target: str, calls: int, timeout: float = 5.0) -> list[str]:
    """`calls` unary calls on one channel (one HTTP/2 connection): who answered each."""
    with grpc.insecure_channel(target) as channel:
        who: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_WHO)
        return [who(b"", timeout=timeout).decode() for _ in range(calls)]


def eventually(
    attempt: Callable[[], list[str]], good: Callable[[list[str]], bool], timeout: float
) -> list[str]:
    """Repeat `attempt` until its answers are good (an Envoy or node may lag by a beat)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answers = attempt()
            if good(answers):
                return answers
        except grpc.RpcError as exc:
            answers = [f"error: {exc.code().name}"]
        if time.monotonic() > deadline:
            return answers
        time.sleep(0.5)
