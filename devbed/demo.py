"""The local platform's sample apps, exposed by label, and the traffic that proves it.

Two kinds, both Services of type LoadBalancer labelled `openslb.io/expose=true`:

- `SampleApp`: a selector-less Service with an EndpointSlice, the Kubernetes way to point a
  Service at endpoints the cluster does not run: `demo/grpc-echo` (appProtocol h2c, so an L7
  listener on the Envoy of node group `default`) backed by the gRPC samples on the host, and
  `demo/tcp-echo` (plain TCP, an IPVS virtual service on the lab VM's node group `lab`)
  backed by the TCP pods inside the VM.
- `DeploymentApp`: what a cluster runs: a Deployment whose pods have a readiness probe,
  behind a Service with a selector; Kubernetes' EndpointSlice controller lists the ready
  pods. `demo/grpc-pods` runs the Gateway API conformance echo server's gRPC Echo
  (devbed/grpcecho.py names the pod that answered), `demo/http-pods` the HTTP sample app,
  and with the lab VM `demo/tcp-pods` the same app's TCP greeting, an IPVS virtual service
  in the VM whose real servers are the pods.

And the Gateway API's way (`GatewayApp`): Gateway `demo/web` of GatewayClass `openslb`,
whose HTTPRoute `shop` sends `/shop` to the Service of `http-pods` and whose GRPCRoute
`calls` sends gRPC Echo calls, on the same port, to the Service of `grpc-pods`.

Objects are written with server-side apply, so running the demo again changes nothing.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from cmi.annotation import EXPOSE_LABEL
from cmi.gateway import CONTROLLER_NAME, GROUP
from cmi.k8s.client import KubeClient
from devbed import grpcecho
from devbed.images import ECHO_BASIC, SAMPLE_HTTP

NAMESPACE = "demo"
FIELD_MANAGER = "openslb-demo"
ECHO_WHO = "/openslb.test.Echo/Who"
EXPOSED, PROGRAMMED = "openslb.io/Exposed", "openslb.io/Programmed"
HTTP_PORT = 8080
"""Where the HTTP sample app listens in its pod."""
TCP_PORT = 9000
"""Where the HTTP sample app greets TCP connections with its pod's name, for `tcp` apps."""


@dataclass(frozen=True)
class SampleApp:
    name: str
    port: int
    endpoints: Sequence[str]  # addresses
    app_protocol: str | None = None
    node_group: str | None = None
    expose: str | None = "true"  # the label's value; None: not exposed (yet)
    target_port: int | None = None  # where the endpoints listen, if not on `port`
    annotations: Mapping[str, str] = field(default_factory=dict)  # the Service's, beyond these

    def manifests(self) -> list[dict[str, Any]]:
        annotations = {"openslb.io/node-group": self.node_group} if self.node_group else {}
        annotations.update(self.annotations)
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


@dataclass(frozen=True)
class DeploymentApp:
    """A Deployment of `replicas` pods behind a Service with a selector. Rolling updates
    keep every ready pod until its successor is ready (maxSurge 1, maxUnavailable 0), and a
    pod being deleted keeps serving `drain_s` (a preStop sleep: on SIGTERM echo-basic exits
    at once and the HTTP sample stops accepting) while the load balancers take it out."""

    name: str
    # echo-basic's gRPC Echo; the HTTP sample app; or its TCP greeting (an L4 listener)
    kind: Literal["grpc", "http", "tcp"]
    port: int  # the Service's, the VIP's
    replicas: int = 3
    version: str = "v1"  # in the pods' environment: change it to roll them
    expose: str | None = "true"  # the label's value; None: not exposed (yet)
    drain_s: int = 5
    node_group: str | None = None  # the Service's `openslb.io/node-group`

    @property
    def target_port(self) -> int:
        return {"grpc": grpcecho.PORT, "http": HTTP_PORT, "tcp": TCP_PORT}[self.kind]

    def manifests(self) -> list[dict[str, Any]]:
        labels = {"app": self.name, **({EXPOSE_LABEL: self.expose} if self.expose else {})}
        annotations = {"openslb.io/node-group": self.node_group} if self.node_group else {}
        port: dict[str, Any] = {"name": self.kind, "port": self.port, "protocol": "TCP",
                                "targetPort": self.kind}  # fmt: skip
        if self.kind != "tcp":
            port["appProtocol"] = "kubernetes.io/h2c" if self.kind == "grpc" else "http"
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": {"app": self.name}},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": {"app": self.name}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": {"app": self.name}},
                    "spec": {"terminationGracePeriodSeconds": self.drain_s + 5,
                             "containers": [self._container()]},
                },
            },
        }  # fmt: skip
        service = {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": labels,
                         "annotations": annotations},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False,
                     "selector": {"app": self.name}, "ports": [port]},
        }  # fmt: skip
        return [deployment, service]

    def _container(self) -> dict[str, Any]:
        env: list[dict[str, Any]] = [
            {"name": "VERSION", "value": self.version},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]  # fmt: skip
        if self.kind == "grpc":
            image = ECHO_BASIC.ref
            env += [{"name": "GRPC_ECHO_SERVER", "value": "1"},
                    {"name": "HTTP_PORT", "value": str(self.target_port)}]  # fmt: skip
            probe: dict[str, Any] = {"tcpSocket": {"port": self.target_port}}
        elif self.kind == "http":
            image = SAMPLE_HTTP.ref
            probe = {"httpGet": {"path": "/healthz", "port": self.target_port}}
        else:
            image = SAMPLE_HTTP.ref
            env += [{"name": "TCP_PORT", "value": str(self.target_port)}]
            probe = {"tcpSocket": {"port": self.target_port}}
        return {
            "name": self.kind, "image": image, "imagePullPolicy": "Never", "env": env,
            "ports": [{"name": self.kind, "containerPort": self.target_port}],
            "readinessProbe": {**probe, "periodSeconds": 1, "failureThreshold": 1},
            "lifecycle": {"preStop": {"sleep": {"seconds": self.drain_s}}},
        }  # fmt: skip

    def who(self, target: str, calls: int, timeout: float = 5.0) -> list[str]:
        """The pods that answered `calls` calls to `target` (the VIP): gRPC calls on one
        HTTP/2 connection, or HTTP requests on a connection each. (A `tcp` app's VIP is on
        an LB node: ask the node, `LabNode.tcp`.)"""
        if self.kind == "tcp":
            raise ValueError(f"{self.name}: a TCP app's VIP answers on its LB node only")
        if self.kind == "grpc":
            return grpcecho.who(target, calls, timeout)
        return [http_who(target, timeout) for _ in range(calls)]


@dataclass
class Exposure:
    """What a Service's status says about its load balancer."""

    vip: str | None = None
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def programmed(self) -> bool:
        return self.conditions.get(PROGRAMMED, ("False",))[0] == "True"


@dataclass(frozen=True)
class GatewayApp:
    """A Gateway of openslb's class with one HTTP listener, an HTTPRoute sending a path
    prefix to a Service (no label needed), and if `grpc_backend` is given a GRPCRoute
    sending echo-basic's gRPC Echo calls to that Service, on the same listener."""

    name: str = "web"
    route: str = "shop"
    path: str = "/shop"
    backend: str = "http-pods"
    backend_port: int = 80
    port: int = 8080
    class_name: str = "openslb"
    grpc_route: str = "calls"
    grpc_backend: str | None = None
    grpc_backend_port: int = 80

    def manifests(self) -> list[dict[str, Any]]:
        api = f"{GROUP}/v1"
        meta = {"namespace": NAMESPACE}
        grpc = [] if self.grpc_backend is None else [
            {"apiVersion": api, "kind": "GRPCRoute",
             "metadata": {"name": self.grpc_route, **meta},
             "spec": {"parentRefs": [{"name": self.name}],
                      "rules": [{"matches": [{"method": {"service": grpcecho.SERVICE}}],
                                 "backendRefs": [{"name": self.grpc_backend,
                                                  "port": self.grpc_backend_port}]}]}},
        ]  # fmt: skip
        return [
            {"apiVersion": api, "kind": "GatewayClass", "metadata": {"name": self.class_name},
             "spec": {"controllerName": CONTROLLER_NAME}},
            {"apiVersion": api, "kind": "Gateway", "metadata": {"name": self.name, **meta},
             "spec": {"gatewayClassName": self.class_name,
                      "listeners": [{"name": "http", "port": self.port, "protocol": "HTTP"}]}},
            {"apiVersion": api, "kind": "HTTPRoute", "metadata": {"name": self.route, **meta},
             "spec": {"parentRefs": [{"name": self.name}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": self.path}}],
                                 "backendRefs": [{"name": self.backend,
                                                  "port": self.backend_port}]}]}},
            *grpc,
        ]  # fmt: skip

    def route_manifest(self) -> dict[str, Any]:
        """The HTTPRoute alone."""
        return next(m for m in self.manifests() if m["kind"] == "HTTPRoute")

    def grpc_who(self, target: str, calls: int, timeout: float = 5.0) -> list[str]:
        """The pods that answered `calls` gRPC Echo calls on one HTTP/2 connection."""
        return grpcecho.who(target, calls, timeout)

    def address(self, kube: KubeClient) -> str | None:
        """`VIP:port` once the Gateway is Programmed, else None."""
        path = f"/apis/{GROUP}/v1/namespaces/{NAMESPACE}/gateways/{self.name}"
        status = kube.get(path).get("status") or {}
        programmed = any(c["type"] == "Programmed" and c["status"] == "True"
                         for c in status.get("conditions") or [])  # fmt: skip
        addresses = status.get("addresses") or []
        return f"{addresses[0]['value']}:{self.port}" if programmed and addresses else None

    def wait_address(self, kube: KubeClient, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (target := self.address(kube)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Gateway {NAMESPACE}/{self.name} has no address after "
                                   f"{timeout:.0f} s")  # fmt: skip
            time.sleep(0.2)
        return target

    def who(self, target: str, calls: int, timeout: float = 5.0) -> list[str]:
        """The pods that answered `calls` requests under the route's path."""
        return [http_who(target, timeout, path=f"{self.path}/demo") for _ in range(calls)]


def apply(kube: KubeClient, apps: Sequence[SampleApp | DeploymentApp | GatewayApp]) -> None:
    """Create or update the namespace and every app's objects."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    ]
    for app in apps:
        objects += app.manifests()
    apply_objects(kube, objects)


def apply_objects(kube: KubeClient, objects: Sequence[dict[str, Any]]) -> None:
    """Create or update these objects (server-side apply), in order."""
    for body in objects:
        kube.request("PATCH", _path(body), body=body, content_type="application/apply-patch+yaml",
                     query={"fieldManager": FIELD_MANAGER, "force": "true"})  # fmt: skip


def _path(body: dict[str, Any]) -> str:
    name, namespace = body["metadata"]["name"], body["metadata"].get("namespace")
    plural = {"Namespace": "namespaces", "Service": "services", "EndpointSlice": "endpointslices",
              "Deployment": "deployments", "GatewayClass": "gatewayclasses",
              "Gateway": "gateways", "HTTPRoute": "httproutes",
              "GRPCRoute": "grpcroutes"}  # fmt: skip
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


def rolled_out(kube: KubeClient, app: DeploymentApp) -> list[str]:
    """The names of the app's pods once its Deployment is rolled out (every replica updated
    and ready, no old pod left); [] before."""
    deployment = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{app.name}")
    status = deployment.get("status") or {}
    done = (
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("replicas") == status.get("updatedReplicas") == app.replicas
        and status.get("readyReplicas") == app.replicas
    )
    pods = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"app={app.name}")
    names = [p["metadata"]["name"] for p in pods["items"]
             if not p["metadata"].get("deletionTimestamp")]  # fmt: skip
    return sorted(names) if done and len(names) == app.replicas else []


def wait_rolled_out(kube: KubeClient, app: DeploymentApp, timeout: float) -> list[str]:
    """The names of the app's pods, once its Deployment is rolled out."""
    deadline = time.monotonic() + timeout
    while not (names := rolled_out(kube, app)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAMESPACE}/{app.name} is not rolled out after {timeout:.0f} s")
        time.sleep(0.5)
    return names


def http_get(target: str, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP GET of `path` at `target` on a connection of its own: status and body."""
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def http_who(target: str, timeout: float = 5.0, path: str = "/") -> str:
    """Who answered one HTTP request to `target`: the HTTP sample app's pod name."""
    status, body = http_get(target, path, timeout)
    if status != 200:
        raise OSError(f"GET http://{target}{path}: {status} {body.strip()}")
    return body.split()[0]


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
        except (OSError, http.client.HTTPException) as exc:
            answers = [f"error: {exc}"]
        if time.monotonic() > deadline:
            return answers
        time.sleep(0.5)
