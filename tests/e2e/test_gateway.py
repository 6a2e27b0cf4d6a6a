"""A Gateway and an HTTPRoute carry requests to pods: the Gateway API on the whole platform
(the one-node cluster with the Gateway API's CRDs, cmi, the xDS server, Envoy)."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

from cmi.gateway import CONTROLLER_NAME, GROUP
from cmi.k8s.client import KubeClient
from devbed import demo
from devbed.platform import DevPlatform
from devbed.process import wait_until

pytestmark = pytest.mark.timeout(300)
API = f"/apis/{GROUP}/v1"
PORT = 8080


def put(kube: KubeClient, path: str, body: dict[str, Any]) -> None:
    """Server-side apply, as `kubectl apply --server-side` does."""
    kube.request("PATCH", f"{path}/{body['metadata']['name']}", body=body,
                 content_type="application/apply-patch+yaml",
                 query={"fieldManager": "e2e", "force": "true"})  # fmt: skip


def get(target: str, path: str) -> tuple[int, str]:
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_an_httproute_carries_requests_to_the_pods_of_the_service_it_names(
    platform: DevPlatform,
) -> None:
    kube = platform.kube()
    namespaced = f"{API}/namespaces/{demo.NAMESPACE}"
    put(kube, f"{API}/gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": "openslb"},
        "spec": {"controllerName": CONTROLLER_NAME}})  # fmt: skip
    put(kube, f"{namespaced}/gateways", {
        "apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "web"},
        "spec": {"gatewayClassName": "openslb",
                 "listeners": [{"name": "http", "port": PORT, "protocol": "HTTP"}]}})  # fmt: skip
    put(kube, f"{namespaced}/httproutes", {
        "apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": "shop"},
        "spec": {"parentRefs": [{"name": "web"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}],
                            "backendRefs": [{"name": "http-pods", "port": 80}]}]}})  # fmt: skip

    def address() -> str | None:
        status = kube.get(f"{namespaced}/gateways/web").get("status") or {}
        programmed = [c for c in status.get("conditions") or [] if c["type"] == "Programmed"]
        ready = programmed and programmed[0]["status"] == "True" and status.get("addresses")
        return f"{status['addresses'][0]['value']}:{PORT}" if ready else None

    wait_until(lambda: address() is not None, 60, "the Gateway's address")
    target = address()
    assert target is not None
    app = next(a for a in platform.deployments() if a.name == "http-pods")
    pods = set(demo.rolled_out(kube, app))

    def answers() -> set[str]:
        found = set()
        for _ in range(12):
            status, body = get(target, "/shop/cart")
            found.add(body.split()[0] if status == 200 else f"status {status}")
        return found

    wait_until(lambda: answers() == pods, 60, f"/shop answered by every pod of {sorted(pods)}",
               interval=0.2)  # fmt: skip
    assert get(target, "/elsewhere")[0] == 404  # no rule matches: the specification's 404

    kube.request("DELETE", f"{namespaced}/httproutes/shop")
    wait_until(lambda: get(target, "/shop/cart")[0] == 404, 30, "the route's rules withdrawn",
               interval=0.2)  # fmt: skip
    kube.request("DELETE", f"{namespaced}/gateways/web")
