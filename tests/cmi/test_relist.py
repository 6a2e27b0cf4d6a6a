"""410 Gone, forced: etcd compacts the history a paused watch would resume from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cmi.controller import Controller
from cmi.k8s.client import KubeClient
from devbed.kube import KubeAPI
from devbed.process import wait_until
from slb.config import CmiSettings
from slb.storage.store import Store
from tests.cmi.conftest import POOL, Running, service_body


@pytest.fixture(scope="module")
def uncached_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """An API server that serves watches from etcd itself (no watch cache), so a compacted
    resourceVersion gives 410 at once."""
    api = KubeAPI(tmp_path_factory.mktemp("kube410"), extra_args=("--watch-cache=false",)).start()
    yield api
    api.stop()


def test_a_watch_resumed_after_compaction_relists_and_converges(
    uncached_kube: KubeAPI, store: Store
) -> None:
    admin = KubeClient.from_kubeconfig(str(uncached_kube.kubeconfig))
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "relist"}})

    def create(name: str) -> None:
        body = service_body(name, labels={"openslb.io/expose": "true"})
        admin.request("POST", "/api/v1/namespaces/relist/services", body=body)

    create("before")
    settings = CmiSettings(namespace="relist", pool_cidrs=POOL, holdoff_ms=20, resync_s=3600,
                           endpoint_slices_from="*")  # fmt: skip
    running = Running(Controller(admin, store, settings, identity="relist"), store).start()
    try:
        informer = running.controller.cluster.services
        wait_until(lambda: running.owned("relist/before")["Listener"], 15, "first exposure")
        assert informer.lists == 1
        listed = informer.get("relist/before")
        assert listed is not None
        assert "managedFields" not in listed["metadata"]  # cached without them, as watched

        informer.stop()  # as if the watch connection were down for a long time
        paused_at = informer.resource_version
        create("during")
        admin.request(
            "PATCH", "/api/v1/namespaces/relist/services/before",
            body={"metadata": {"labels": {"openslb.io/expose": None}}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        assert uncached_kube.compact_etcd() > int(paused_at)

        informer.start()  # resumes from paused_at: compacted, so 410, so a new list
        wait_until(lambda: informer.lists == 2, 15, "relist after 410")

        def converged() -> bool:
            owned: dict[str, Any] = {k: running.owned(f"relist/{k}") for k in ("before", "during")}
            return bool(owned["during"]["Listener"]) and not owned["before"]["Listener"]

        wait_until(converged, 15, "state after the relist")
        assert informer.resource_version != paused_at
    finally:
        running.stop()


def test_compaction_really_makes_old_versions_gone(uncached_kube: KubeAPI) -> None:
    """Guard for the test above: without the 410, it would prove nothing."""
    from cmi.k8s.client import GoneError

    admin = KubeClient.from_kubeconfig(str(uncached_kube.kubeconfig))
    old = admin.get("/api/v1/namespaces/default/services")["metadata"]["resourceVersion"]
    admin.request("POST", "/api/v1/namespaces/default/services", body=service_body("poke"))
    uncached_kube.compact_etcd()
    with pytest.raises(GoneError):
        for _ in admin.watch("/api/v1/namespaces/default/services", old, timeout_s=5):
            pass
