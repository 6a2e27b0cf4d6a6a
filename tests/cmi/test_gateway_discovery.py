"""The Gateway API installed while cmi runs: its own API server, started without the Gateway
API's CRDs; cmi, as its least-privilege ServiceAccount, serves a Gateway made after the CRDs
are installed, from its next resync, without a restart."""

from __future__ import annotations

from pathlib import Path

from cmi.controller import Controller
from cmi.gateway import instance_name
from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI
from slb.config import CmiSettings
from slb.model import LoadBalancer
from slb.storage.store import Store
from tests.cmi.conftest import POOL, Running
from tests.cmi.test_gateway_api import conditions, eventually, gateway, gateway_class, status


def test_the_gateway_api_installed_after_cmi_started_is_served_from_the_next_resync(
    store: Store, tmp_path: Path
) -> None:
    api = KubeAPI(tmp_path / "kube").start()
    running = None
    try:
        admin = KubeClient.from_kubeconfig(str(api.kubeconfig))
        admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "shop"}})
        settings = CmiSettings(namespace="shop", pool_cidrs=POOL, holdoff_ms=50,
                               max_holdoff_ms=300, resync_s=2, vip_record="")  # fmt: skip
        client = KubeClient.from_kubeconfig(str(api.cmi_kubeconfig()))
        controller = Controller(client, store, settings, identity="test-cmi")
        running = Running(controller, store).start()
        eventually(lambda: controller.reconciles > 0, "cmi's first sync")
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
        gateway_class_status = status(admin, "", "gatewayclasses", "openslb-late")
        assert conditions(gateway_class_status)["Accepted"] == ("True", "Accepted")
    finally:
        if running is not None:
            running.stop()
        api.stop()
