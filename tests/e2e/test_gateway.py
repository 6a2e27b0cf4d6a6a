"""A Gateway and an HTTPRoute carry requests to pods: the Gateway API on the whole platform
(the one-node cluster with the Gateway API's CRDs, cmi, the xDS server, Envoy)."""

from __future__ import annotations

import pytest

from cmi.gateway import GROUP
from devbed import demo
from devbed.platform import DevPlatform
from devbed.process import wait_until

pytestmark = pytest.mark.timeout(300)


def test_an_httproute_carries_requests_to_the_pods_of_the_service_it_names(
    platform: DevPlatform,
) -> None:
    kube = platform.kube()
    app = demo.DeploymentApp("gateway-pods", "http", 80, replicas=2, expose=None)  # no label
    gateway = demo.GatewayApp(name="e2e", route="e2e-shop", port=8081, backend=app.name)
    demo.apply(kube, [app, gateway])
    target = gateway.wait_address(kube, 60)
    pods = set(demo.wait_rolled_out(kube, app, 120))

    def answered() -> set[str]:
        found = set()
        for _ in range(12):
            status, body = demo.http_get(target, f"{gateway.path}/cart")
            found.add(body.split()[0] if status == 200 else f"status {status}")
        return found

    wait_until(lambda: answered() == pods, 60, f"{gateway.path} answered by {sorted(pods)}",
               interval=0.2)  # fmt: skip
    assert demo.http_get(target, "/elsewhere")[0] == 404  # no rule matches it

    namespaced = f"/apis/{GROUP}/v1/namespaces/{demo.NAMESPACE}"
    kube.request("DELETE", f"{namespaced}/httproutes/{gateway.route}")
    wait_until(lambda: demo.http_get(target, f"{gateway.path}/cart")[0] == 404, 30,
               "the route's rules withdrawn", interval=0.2)  # fmt: skip
    kube.request("DELETE", f"{namespaced}/gateways/{gateway.name}")
    kube.request("DELETE", f"/apis/apps/v1/namespaces/{demo.NAMESPACE}/deployments/{app.name}")
    kube.request("DELETE", f"/api/v1/namespaces/{demo.NAMESPACE}/services/{app.name}")
