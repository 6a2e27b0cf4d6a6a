"""The Gateway API installed while cmi runs: its own API server, started without the Gateway
API's CRDs; cmi, as its least-privilege ServiceAccount, serves a Gateway made after the CRDs
are installed, from its next resync, without a restart."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from cmi.controller import Controller
from cmi.gateway import GROUP, ROUTE_RESOURCES, instance_name
from cmi.gateways import served
from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI
from slb.config import CmiSettings
from slb.model import LoadBalancer
from slb.storage.store import Store
from tests.cmi.conftest import POOL, Running
from tests.cmi.test_gateway_api import (
    conditions,
    eventually,
    gateway,
    gateway_class,
    parent,
    route,
    status,
)


@contextmanager
def cmi_on_own_api(
    store: Store, tmp_path: Path, leave_out: Collection[str] | None = None
) -> Iterator[tuple[KubeAPI, KubeClient, Controller]]:
    """An API server of the test's own (the Gateway API's CRDs installed but `leave_out`'s,
    or none at all: None), namespace `shop`, and cmi (resync every 2 s) leading on it."""
    api = KubeAPI(tmp_path / "kube").start()
    running = None
    try:
        if leave_out is not None:
            api.install_gateway_api(leave_out=leave_out)
        admin = KubeClient.from_kubeconfig(str(api.kubeconfig))
        admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "shop"}})
        settings = CmiSettings(namespace="shop", pool_cidrs=POOL, holdoff_ms=50,
                               max_holdoff_ms=300, resync_s=2, vip_record="")  # fmt: skip
        client = KubeClient.from_kubeconfig(str(api.cmi_kubeconfig()))
        controller = Controller(client, store, settings, identity="test-cmi")
        running = Running(controller, store).start()
        eventually(lambda: controller.reconciles > 0, "cmi's first sync")
        yield api, admin, controller
    finally:
        if running is not None:
            running.stop()
        api.stop()


def test_the_gateway_api_installed_after_cmi_started_is_served_from_the_next_resync(
    store: Store, tmp_path: Path
) -> None:
    with cmi_on_own_api(store, tmp_path) as (api, admin, controller):
        assert controller.cluster.gateways is None  # no Gateway API yet
        api.install_gateway_api()
        gateway_class(admin, "openslb-late")
        gateway(admin, "shop", "edge", "openslb-late")
        eventually(
            lambda: conditions(status(admin, "shop", "gateways", "edge")).get("Accepted")
            == ("True", "Accepted"),
            "the Gateway accepted", timeout=60,
        )  # fmt: skip
        assert store.get(LoadBalancer, instance_name("shop", "edge")) is not None
        eventually(  # the class's status is a write of its own, maybe after the Gateway's
            lambda: conditions(status(admin, "", "gatewayclasses", "openslb-late")).get(
                "Accepted") == ("True", "Accepted"),
            "the class accepted",
        )  # fmt: skip


def test_a_route_kind_installed_after_the_others_is_served_from_the_next_resync(
    store: Store, tmp_path: Path
) -> None:
    """A cluster upgrades its Gateway API: TCPRoutes come later than the other kinds."""
    with cmi_on_own_api(store, tmp_path, leave_out=("tcproutes",)) as (api, admin, controller):
        gateways = controller.cluster.gateways
        assert gateways is not None
        assert "TCPRoute" not in gateways.routes
        api.install_gateway_api()
        gateway_class(admin, "openslb-late-kind")
        gateway(admin, "shop", "edge", "openslb-late-kind",
                listeners=[{"name": "db", "port": 5432, "protocol": "TCP"}])  # fmt: skip
        route(admin, "shop", "db", {"parentRefs": [{"name": "edge"}],
                                    "rules": [{"backendRefs": [{"name": "db", "port": 80}]}]},
              kind="TCPRoute")  # fmt: skip
        eventually(
            lambda: parent(admin, "shop", "db", "TCPRoute").get("Accepted") == ("True", "Accepted"),
            "the TCPRoute accepted", timeout=60,
        )  # fmt: skip
        (entry,) = status(admin, "shop", "gateways", "edge")["listeners"]
        assert entry["attachedRoutes"] == 1


def test_a_route_kind_cmi_may_not_list_is_left_out(
    kube: KubeAPI, admin: KubeClient, namespace: str
) -> None:
    """cmi's RBAC older than cmi (no TCPRoutes, UDPRoutes): those kinds are not watched,
    so the others' caches sync and cmi serves them, instead of waiting forever."""
    account, api = f"old-rbac-{namespace}", "rbac.authorization.k8s.io/v1"
    admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
                  body={"apiVersion": api, "kind": "Role", "metadata": {"name": account},
                        "rules": [{"apiGroups": [GROUP], "verbs": ["list", "watch"],
                                   "resources": ["gateways", "httproutes", "grpcroutes",
                                                 "tlsroutes"]}]})  # fmt: skip
    admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
                  body={"apiVersion": api, "kind": "RoleBinding", "metadata": {"name": account},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                    "name": account},
                        "subjects": [{"kind": "ServiceAccount", "name": account,
                                      "namespace": namespace}]})  # fmt: skip
    old = KubeClient.from_kubeconfig(str(kube.service_account_kubeconfig(namespace, account)))
    scope = f"/namespaces/{namespace}"
    assert served(old, scope) == ["HTTPRoute", "GRPCRoute", "TLSRoute"]
    assert served(admin, scope) == list(ROUTE_RESOURCES)
