"""cmi against a real kube-apiserver and Redis, running as its least-privilege ServiceAccount."""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from cmi import readiness
from cmi.build import dedicated_name, short_name
from cmi.k8s.client import KubeClient, KubeError
from cmi.k8s.writer import CONDITION, FINALIZER, PROGRAMMED
from devbed.l7harness import listener
from devbed.process import wait_until
from devbed.redis import backup, lose, restore
from slb.model import (
    Listener,
    LoadBalancer,
    Namespace,
    NodeGroup,
    Owner,
    OwnerKind,
    Protocol,
    Service,
)
from slb.selector import LabelSelector
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.cmi.conftest import Running, service_body, slice_body

EXPOSE = {"openslb.io/expose": "true", "app": "cart"}
Start = Callable[..., Running]


def create(admin: KubeClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return admin.request("POST", f"/api/v1/namespaces/{namespace}/services", body=body)


def patch(admin: KubeClient, namespace: str, name: str, body: dict[str, Any]) -> None:
    admin.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/services/{name}",
        body=body,
        content_type="application/merge-patch+json",
    )


def put_slice(admin: KubeClient, namespace: str, body: dict[str, Any]) -> None:
    base = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    try:
        current = admin.get(f"{base}/{body['metadata']['name']}")
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        admin.request("PUT", f"{base}/{body['metadata']['name']}", body=body)
    except KubeError as exc:
        if exc.status != 404:
            raise
        admin.request("POST", base, body=body)


def svc(admin: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    return admin.get(f"/api/v1/namespaces/{namespace}/services/{name}")


def events(admin: KubeClient, namespace: str, name: str) -> list[tuple[str, str]]:
    items = admin.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector=f"involvedObject.name={name}",
    )["items"]
    return [(e["reason"], e["message"]) for e in items]


def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> None:
    wait_until(lambda: bool(check()), timeout, what, interval=0.05)


def ingress_ip(admin: KubeClient, namespace: str, name: str) -> str | None:
    ingress = (svc(admin, namespace, name).get("status", {}).get("loadBalancer") or {}).get(
        "ingress"
    ) or []
    return ingress[0]["ip"] if ingress else None


def test_labelling_exposes_with_a_vip_status_finalizer_and_event(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    put_slice(admin, namespace, slice_body("cart", "cart-1", ["198.18.1.1", "198.18.1.2"]))
    key = f"{namespace}/cart"
    eventually(lambda: ingress_ip(admin, namespace, "cart"), "status ingress")
    owned = running.owned(key)
    (balancer,) = owned["LoadBalancer"].values()
    assert balancer.name == dedicated_name(namespace, "cart")
    assert ipaddress.ip_address(str(ingress_ip(admin, namespace, "cart"))) == balancer.vip
    assert balancer.vip in ipaddress.ip_network("198.18.0.0/24")
    (listener,) = owned["Listener"].values()
    assert (listener.protocol, listener.port) == (Protocol.GRPC, 50051)
    eventually(
        lambda: len(running.owned(key)["Service"][key].backends.get("grpc", ())) == 2, "backends"
    )
    body = svc(admin, namespace, "cart")
    assert FINALIZER in body["metadata"]["finalizers"]
    (condition,) = [c for c in body["status"]["conditions"] if c["type"] == CONDITION]
    assert condition["status"] == "True"
    assert f"{balancer.vip}:50051/GRPC" in condition["message"]
    eventually(lambda: any(r == "Exposed" for r, _ in events(admin, namespace, "cart")), "event")
    # Every write is a revision with its entry in the change stream: the tiers' notification.
    changes = store.changes(0)
    assert [c.revision for c in changes] == list(range(1, store.revision() + 1))
    assert all(c.meta.get("who") == "test-cmi" for c in changes)
    # The leader beats, so the console can tell that a controller is alive and where it is.
    eventually(lambda: (b := StatusBoard(store).controller()) and b.revision == store.revision(),
               "the controller's beat")  # fmt: skip
    beat = StatusBoard(store).controller()
    assert beat is not None
    assert (beat.identity, beat.epoch) == ("test-cmi", 1)
    assert beat.age() < 10


def test_a_change_the_build_does_not_read_rebuilds_nothing(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    """cmi's own status writes (three per Service), or another controller's condition, are
    not a reason to build a Service again; a label is."""
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    put_slice(admin, namespace, slice_body("cart", "cart-1", ["198.18.1.1"]))
    eventually(lambda: FINALIZER in (svc(admin, namespace, "cart")["metadata"].get("finalizers")
                                     or []) and ingress_ip(admin, namespace, "cart"),
               "status and finalizer")  # fmt: skip
    time.sleep(1.0)  # the reporter's writes come back as watch events meanwhile
    cached = running.controller.cluster.services.get(f"{namespace}/cart")
    assert cached is not None
    assert "managedFields" in svc(admin, namespace, "cart")["metadata"]
    assert "managedFields" not in cached["metadata"], "the cache keeps what cmi reads"
    before = running.controller.reconciles
    body = svc(admin, namespace, "cart")
    conditions = [*body["status"].get("conditions", []), {
        "type": "example.com/Audited", "status": "True", "reason": "Audited", "message": "",
        "lastTransitionTime": "2026-12-03T00:00:00Z"}]  # fmt: skip
    admin.request("PATCH", f"/api/v1/namespaces/{namespace}/services/cart/status",
                  body={"status": {"conditions": conditions}},
                  content_type="application/merge-patch+json")  # fmt: skip
    time.sleep(1.0)
    assert running.controller.reconciles == before
    patch(admin, namespace, "cart", {"metadata": {"labels": {"team": "blue"}}})
    eventually(lambda: running.controller.reconciles > before, "a rebuild for the label")


def test_unlabel_withdraws_and_relabel_within_grace_keeps_the_vip(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi(release_grace_s=2)
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    key = f"{namespace}/cart"
    eventually(lambda: ingress_ip(admin, namespace, "cart"), "exposed")
    vip = ingress_ip(admin, namespace, "cart")

    patch(admin, namespace, "cart", {"metadata": {"labels": {"openslb.io/expose": None}}})
    eventually(lambda: not running.owned(key)["Listener"], "listeners withdrawn")
    eventually(lambda: ingress_ip(admin, namespace, "cart") is None, "status cleared")
    eventually(
        lambda: (
            FINALIZER not in (svc(admin, namespace, "cart")["metadata"].get("finalizers") or [])
        ),
        "finalizer removed",
    )
    body = svc(admin, namespace, "cart")
    assert not any(c["type"] == CONDITION for c in body["status"].get("conditions") or [])
    assert running.owned(key)["LoadBalancer"], "the instance and its VIP are held for the grace"

    patch(admin, namespace, "cart", {"metadata": {"labels": {"openslb.io/expose": "true"}}})
    eventually(lambda: ingress_ip(admin, namespace, "cart") == vip, "same VIP again")

    patch(admin, namespace, "cart", {"metadata": {"labels": {"openslb.io/expose": None}}})
    eventually(lambda: not running.owned(key)["Listener"], "withdrawn again")
    time.sleep(2.2)
    patch(admin, namespace, "cart", {"metadata": {"annotations": {"poke": "1"}}})
    eventually(lambda: not running.owned(key)["LoadBalancer"], "instance freed after the grace")


def test_relabel_to_a_shared_instance(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    running = cmi()
    shared = LoadBalancer(
        name="public", vip="198.18.0.200", pool="default",
        owner=Owner(kind=OwnerKind.OPERATOR, name="ops"), allowed_namespaces=(namespace,),
    )  # fmt: skip
    store.put(shared)
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    eventually(lambda: ingress_ip(admin, namespace, "cart"), "exposed on its own")
    patch(admin, namespace, "cart", {"metadata": {"labels": {"openslb.io/expose": "public"}}})
    eventually(lambda: ingress_ip(admin, namespace, "cart") == "198.18.0.200", "moved to public")
    key = f"{namespace}/cart"
    (listener,) = running.owned(key)["Listener"].values()
    assert listener.load_balancer == "public"
    patch(admin, namespace, "cart", {"metadata": {"labels": {"openslb.io/expose": "nosuch"}}})
    eventually(
        lambda: any(r == "InstanceNotFound" for r, _ in events(admin, namespace, "cart")),
        "missing instance reported",
    )
    eventually(lambda: not running.owned(key)["Listener"], "withdrawn")


def test_deleting_a_service_cleans_up_before_it_disappears(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    key = f"{namespace}/cart"
    eventually(lambda: running.owned(key)["Listener"], "exposed")
    eventually(
        lambda: FINALIZER in (svc(admin, namespace, "cart")["metadata"].get("finalizers") or []),
        "finalizer set",
    )
    admin.request("DELETE", f"/api/v1/namespaces/{namespace}/services/cart")

    def gone() -> bool:
        try:
            svc(admin, namespace, "cart")
        except KubeError as exc:
            return exc.status == 404
        return False

    eventually(gone, "deleted once cmi removed its finalizer")
    assert not running.owned(key)["Listener"]
    assert not running.owned(key)["Service"]


def test_ports_added_renamed_removed_and_protocol_changes(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    key = f"{namespace}/cart"

    def ports() -> dict[int, Protocol]:
        return {li.port: li.protocol for li in running.owned(key)["Listener"].values()}

    eventually(lambda: ports() == {50051: Protocol.GRPC}, "one port")
    two = [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}, {"name": "db", "port": 5432}]
    patch(admin, namespace, "cart", {"spec": {"ports": two}})
    eventually(lambda: ports() == {50051: Protocol.GRPC, 5432: Protocol.TCP}, "port added")
    renamed = [{"name": "grpc", "port": 50051}, {"name": "http-web", "port": 5432}]
    patch(admin, namespace, "cart", {"spec": {"ports": renamed}})
    eventually(lambda: ports() == {50051: Protocol.GRPC, 5432: Protocol.HTTP}, "renamed: now L7")
    plain = [{"name": "grpc", "port": 50051, "appProtocol": "kubernetes.io/h2c"}]
    patch(admin, namespace, "cart", {"spec": {"ports": plain}})
    eventually(lambda: ports() == {50051: Protocol.HTTP}, "port removed, appProtocol changed")


def test_endpoints_scale_up_down_and_terminating_ones_drain(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    key = f"{namespace}/cart"

    def backends() -> list[tuple[str, bool]]:
        service = running.owned(key)["Service"].get(key)
        if service is None:
            return []
        return [
            (str(b.address), b.conditions.terminating) for b in service.backends.get("grpc", ())
        ]

    eventually(lambda: running.owned(key)["Service"], "exposed")
    assert backends() == []
    ten = [f"198.18.1.{i}" for i in range(1, 11)]
    put_slice(admin, namespace, slice_body("cart", "cart-a", ten[:6]))
    put_slice(admin, namespace, slice_body("cart", "cart-b", ten[6:]))
    eventually(lambda: len(backends()) == 10, "10 endpoints")
    put_slice(
        admin,
        namespace,
        slice_body("cart", "cart-b", ten[6:], ready=False, serving=True, terminating=True),
    )
    eventually(lambda: sum(t for _, t in backends()) == 4, "4 terminating, kept for drain")
    for name in ("cart-a", "cart-b"):
        admin.request(
            "DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}"
        )
    eventually(lambda: backends() == [], "scaled to 0")


def test_node_mode_with_local_policy_and_a_not_ready_node(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    prefix = namespace  # node names are cluster-wide: keep ours apart
    for index, ready in ((1, "True"), (2, "True"), (3, "False")):
        name = f"{prefix}-n{index}"
        admin.request("POST", "/api/v1/nodes", body={"metadata": {"name": name}})
        admin.request(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            body={"status": {
                "conditions": [{"type": "Ready", "status": ready, "reason": "Test",
                                "lastHeartbeatTime": None, "lastTransitionTime": None}],
                "addresses": [{"type": "InternalIP", "address": f"198.18.3.{index}"}],
            }},
            content_type="application/merge-patch+json",
        )  # fmt: skip
    running = cmi()
    created = create(admin, namespace, service_body(
        "cart", labels=EXPOSE, annotations={"openslb.io/backend-mode": "node"},
        ports=[{"name": "grpc", "port": 50051}],  # the API server picks a free NodePort
        externalTrafficPolicy="Local", allocateLoadBalancerNodePorts=True,
    ))  # fmt: skip
    node_port = created["spec"]["ports"][0]["nodePort"]
    endpoints = slice_body(
        "cart", "cart-1", ["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4"]
    )
    for endpoint, node in zip(endpoints["endpoints"], ("n1", "n1", "n2", "n3"), strict=True):
        endpoint["nodeName"] = f"{prefix}-{node}"
    put_slice(admin, namespace, endpoints)
    key = f"{namespace}/cart"

    def backends() -> list[tuple[str, int, int]]:
        service = running.owned(key)["Service"].get(key)
        if service is None:
            return []
        return [(str(b.address), b.port, b.weight) for b in service.backends.get("grpc", ())]

    eventually(
        lambda: backends() == [("198.18.3.1", node_port, 2), ("198.18.3.2", node_port, 1)],
        "node mode",
    )
    admin.request("PATCH", f"/api/v1/nodes/{prefix}-n2",
                  body={"spec": {"unschedulable": True}},
                  content_type="application/merge-patch+json")  # fmt: skip
    eventually(lambda: backends() == [("198.18.3.1", node_port, 2)], "cordoned node left out")


def test_two_services_colliding_on_a_port(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    store.put(LoadBalancer(name="public", vip="198.18.0.201", pool="default",
                           owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
                           allowed_namespaces=("*",)))  # fmt: skip
    running = cmi()
    shared = {"openslb.io/expose": "public"}
    create(admin, namespace, service_body("first", labels=shared))
    eventually(lambda: ingress_ip(admin, namespace, "first"), "first exposed")
    create(admin, namespace, service_body("second", labels=shared))  # claims the port later
    eventually(
        lambda: any(r == "ListenerConflict" for r, _ in events(admin, namespace, "second")),
        "conflict reported on the newer Service",
    )
    assert not any(r == "ListenerConflict" for r, _ in events(admin, namespace, "first"))
    (listener,) = running.owned(f"{namespace}/second")["Listener"]
    status = store.redis.hget(store.key("listener-status"), listener)
    assert status is not None
    assert b"already taken (by its instance's owner, or an earlier claim)" in status

    def condition() -> dict[str, str] | None:  # the Event and the status go out separately
        conditions = svc(admin, namespace, "second").get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == CONDITION), None)

    eventually(condition, "the newer Service's status written")
    cond = condition()
    assert cond is not None
    assert cond["status"] == "False"
    assert cond["reason"] == "ListenerConflict"


def test_bad_annotations_report_and_keep_serving_as_before(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE,
                                          annotations={"openslb.io/scheduler": "wlc"}))  # fmt: skip
    key = f"{namespace}/cart"
    eventually(lambda: running.owned(key)["Listener"], "exposed")
    (before,) = running.owned(key)["Listener"].values()
    patch(admin, namespace, "cart", {"metadata": {"annotations": {
        "openslb.io/scheduler": "fastest", "openslb.io/idle-timeout": "30",
    }}})  # fmt: skip
    eventually(
        lambda: any("openslb.io/scheduler" in m for _, m in events(admin, namespace, "cart")),
        "the bad annotation is named in an Event",
    )
    (after,) = running.owned(key)["Listener"].values()
    assert after == before  # neither the bad scheduler nor the good idle-timeout applied
    patch(admin, namespace, "cart", {"metadata": {"annotations": {"openslb.io/scheduler": "sh"}}})
    eventually(
        lambda: [li.idle_timeout_s for li in running.owned(key)["Listener"].values()] == [30],
        "all applied once valid",
    )


def test_explicit_vip_outside_every_pool_is_rejected(
    cmi: Start, admin: KubeClient, namespace: str
) -> None:
    running = cmi()
    create(admin, namespace, service_body(
        "cart", labels=EXPOSE, annotations={"openslb.io/vip": "198.19.250.1"}))  # fmt: skip
    eventually(
        lambda: any(r == "VIPUnavailable" and "outside every address pool" in m
                    for r, m in events(admin, namespace, "cart")),
        "rejection event",
    )  # fmt: skip
    assert not running.owned(f"{namespace}/cart")["Listener"]
    assert ingress_ip(admin, namespace, "cart") is None
    patch(
        admin, namespace, "cart", {"metadata": {"annotations": {"openslb.io/vip": "198.18.0.99"}}}
    )
    eventually(lambda: ingress_ip(admin, namespace, "cart") == "198.18.0.99", "a good VIP applies")


def expose(admin: KubeClient, namespace: str, names: str) -> dict[str, str | None]:
    """Services of these one-letter names, each with an instance of its own; their VIPs."""
    for name in names:
        create(admin, namespace, service_body(name, labels={"openslb.io/expose": "true"}))
    eventually(lambda: all(ingress_ip(admin, namespace, n) for n in names), f"{names} exposed")
    return {n: ingress_ip(admin, namespace, n) for n in names}


def test_restart_keeps_every_vip(cmi: Start, admin: KubeClient, namespace: str) -> None:
    first = cmi()
    vips = expose(admin, namespace, "abc")
    first.stop()
    second = cmi()
    create(admin, namespace, service_body("d", labels={"openslb.io/expose": "true"}))
    eventually(lambda: ingress_ip(admin, namespace, "d"), "a fourth exposed")
    assert {n: ingress_ip(admin, namespace, n) for n in "abc"} == vips
    assert ingress_ip(admin, namespace, "d") not in vips.values()
    assert second.controller.writes >= 1


def test_a_lost_store_moves_no_vip(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """The store emptied: a rebuilt store gives each Service the VIP its status names, even
    with a new Service that sorts first and would otherwise draw the lowest free address."""
    first = cmi()
    vips = expose(admin, namespace, "bcd")
    first.stop()
    assert lose(store)
    create(admin, namespace, service_body("a", labels={"openslb.io/expose": "true"}))
    cmi()
    eventually(lambda: ingress_ip(admin, namespace, "a"), "the new one exposed")
    assert {n: ingress_ip(admin, namespace, n) for n in "bcd"} == vips
    assert ingress_ip(admin, namespace, "a") not in vips.values()


def test_an_operators_instance_gets_its_vip_back_from_the_record(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """An operator's instance is lost with the store, and has no Kubernetes object to name
    its VIP: cmi's record (a ConfigMap) holds the address for it through the rebuild, so a
    Service exposed meanwhile draws another one, and the restored instance gets it back."""
    record = "/api/v1/namespaces/openslb-system/configmaps/openslb-vips"
    with contextlib.suppress(KubeError):
        admin.request("DELETE", record)
    ops = LoadBalancer(name="ops", pool="default", owner=Owner(kind=OwnerKind.OPERATOR, name="o"))
    try:
        first = cmi(vip_record="openslb-vips")
        store.put(ops)
        eventually(lambda: store.get(LoadBalancer, "ops").obj.vip, "the instance's VIP")
        vip = str(store.get(LoadBalancer, "ops").obj.vip)

        def recorded() -> Any:
            with contextlib.suppress(KubeError):  # 404 until cmi writes it
                return admin.get(record)["data"]

        eventually(lambda: recorded() == {"ops": vip}, "the VIP recorded")
        first.stop()
        assert lose(store)
        cmi(vip_record="openslb-vips")
        exposed = expose(admin, namespace, "a")  # the lowest free address, but for the record
        assert exposed["a"] != vip
        store.put(ops)  # the operator restores the instance
        eventually(lambda: str(store.get(LoadBalancer, "ops").obj.vip) == vip, "its VIP back")
        assert recorded() == {"ops": vip}  # Services' VIPs live in their status
    finally:
        admin.request("DELETE", record)


def test_a_store_emptied_under_a_running_cmi_is_rebuilt_and_marked_synced(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    running = cmi()
    expose(admin, namespace, "bc")
    before = store.snapshot()
    assert before.synced is not None
    assert before.synced.store_id == before.store_id
    vips = {key: s.obj.vip for key, s in before.of(LoadBalancer).items()}
    assert lose(store)  # Redis lost its data

    def rebuilt() -> bool:
        now = store.snapshot()
        return bool(now.synced and now.synced.store_id == now.store_id != before.store_id
                    and len(now.of(Service)) == 2)  # fmt: skip

    eventually(rebuilt, "the store rebuilt and marked synced")
    after = store.snapshot()
    assert after.syncing is None
    assert {key: s.obj.vip for key, s in after.of(LoadBalancer).items()} == vips
    assert running.thread.is_alive()


def test_a_store_restored_from_an_older_copy_is_held_while_cmi_rebuilds_it(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """The older copy carries cmi's own mark of then: cmi marks it as being rebuilt, so no
    consumer takes the half-rebuilt store for a complete one."""
    running = cmi()
    expose(admin, namespace, "b")
    older = backup(store)
    expose(admin, namespace, "c")
    running.stop()
    ahead = store.revision()
    restore(store, older)
    assert store.revision() < ahead
    snapshot = store.snapshot()
    assert snapshot.synced is not None
    assert snapshot.synced.store_id == snapshot.store_id  # the backup's own mark
    running.controller.resync()  # the rebuild, without its last step (the synced mark)
    rebuilt = store.snapshot()
    assert rebuilt.syncing == rebuilt.store_id
    assert len(rebuilt.of(Service)) == 2


def test_the_service_account_can_do_no_more_than_its_role(
    cmi_kubeconfig: Any, namespace: str
) -> None:
    client = KubeClient.from_kubeconfig(str(cmi_kubeconfig))
    with pytest.raises(KubeError) as denied:
        client.request("DELETE", f"/api/v1/namespaces/{namespace}/services/anything")
    assert denied.value.status == 403
    # TLS Secrets are listed and watched (openslb.io/tls-secrets); none is read by name,
    # and none written.
    secret = {"metadata": {"name": "x"}}
    for method, path, body in [("GET", "secrets/anything", None), ("POST", "secrets", secret),
                               ("DELETE", "secrets/anything", None)]:  # fmt: skip
        with pytest.raises(KubeError) as no_secrets:
            client.request(method, f"/api/v1/namespaces/{namespace}/{path}", body=body)
        assert no_secrets.value.status == 403, (method, path)
    with pytest.raises(KubeError) as other_config:  # its own VIP record only
        client.get("/api/v1/namespaces/openslb-system/configmaps/kube-root-ca.crt")
    assert other_config.value.status == 403


def test_the_service_says_when_every_node_serves_it(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """The data planes report through the status board; cmi turns that into a condition."""
    store.put(NodeGroup.model_validate(
        {"name": "default", "nodes": [{"name": "lb1", "address": "198.18.255.15"}]}))  # fmt: skip
    cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))

    def programmed() -> tuple[str, str, str] | None:
        for c in svc(admin, namespace, "cart").get("status", {}).get("conditions") or []:
            if c["type"] == PROGRAMMED:
                return c["status"], c["reason"], c["message"]
        return None

    eventually(lambda: (programmed() or ("",))[0] == "False", "pending")
    assert "LB node lb1 has not reported" in programmed()[2]
    board = StatusBoard(store)
    revision = store.revision()
    board.report("l4", "lb1", "default", revision)
    eventually(lambda: "no Envoy of group 'default'" in (programmed() or ("", "", ""))[2], "L7 too")
    board.report("l7", "envoy-1", "default", revision)
    eventually(lambda: (programmed() or ("",))[0] == "True", "programmed")
    board.report("l7", "envoy-1", "default", revision, error="malformed certificate",
                 error_revision=revision)  # fmt: skip
    eventually(lambda: (programmed() or ("", ""))[1] == "Error", "error shown")
    assert "Envoy envoy-1 rejected revision" in programmed()[2]
    eventually(
        lambda: any(r == "ProgrammingFailed" for r, _ in events(admin, namespace, "cart")),
        "an Event for the failure",
    )
    board.l4_alarm("lb1", "the store is empty: nothing wrote it since it was created")
    eventually(
        lambda: any(r == "DataPlaneHeld" and "LB node lb1: the store is empty" in m
                    for r, m in events(admin, namespace, "cart")),
        "an Event while a data plane keeps its last good state",
    )  # fmt: skip


def test_readiness_is_worked_out_again_only_when_a_report_or_the_store_moved(
    cmi: Start, admin: KubeClient, namespace: str, store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Every Service's readiness costs about 100 ms at 10,000: a beat of a data plane that
    serves the same revision as before is no reason to work it out again."""
    checks: list[int] = []
    of_services = readiness.of_services

    def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append(1)
        return of_services(*args, **kwargs)

    monkeypatch.setattr(readiness, "of_services", counted)
    running = cmi()
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    eventually(lambda: ingress_ip(admin, namespace, "cart"), "exposed")
    board = StatusBoard(store)
    board.report("l4", "lb1", "default", store.revision())
    eventually(lambda: checks, "a check after the report")
    time.sleep(1.5)  # the loop's periodic check is due every second
    checks.clear()
    board.report("l4", "lb1", "default", store.revision())  # the same again, a later beat
    time.sleep(2.5)
    assert checks == []
    board.report("l4", "lb1", "default", store.revision(), error="netlink: refused",
                 error_revision=store.revision())  # fmt: skip
    eventually(lambda: checks, "a check after a report that moved")
    assert running.controller.reconciles > 0


def test_a_hand_made_endpointslice_cannot_point_a_vip_elsewhere(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """A tenant who may write EndpointSlices points its VIP at another tenant's pod, at a
    VIP and at Redis' subnet: by default cmi takes only the EndpointSlice controller's
    slices, and never an endpoint in a range it refuses (#14). (The API server itself
    refuses loopback and link-local endpoints.)"""
    cmi(endpoint_slices_from="", refused_backend_cidrs="198.18.5.0/24")
    create(admin, namespace, service_body("cart", labels=EXPOSE, selector={"app": "cart"}))
    forged = slice_body("cart", "cart-forged", ["198.18.1.66"])
    forged["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "tenant"
    put_slice(admin, namespace, forged)
    labelled = slice_body("cart", "cart-labelled", ["198.18.0.200", "198.18.5.1", "198.18.1.1"])
    labelled["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = (
        "endpointslice-controller.k8s.io"  # the label alone is not enough to point anywhere
    )
    put_slice(admin, namespace, labelled)
    key = f"{namespace}/cart"
    eventually(
        lambda: (
            (s := store.get(Service, key)) is not None
            and {str(b.address) for b in s.obj.backends.get("grpc", ())} == {"198.18.1.1"}
        ),
        "only the controller's slice, without the refused endpoints",
    )
    eventually(
        lambda: (
            {"EndpointSlicesIgnored", "EndpointsRefused"}
            <= {reason for reason, _ in events(admin, namespace, "cart")}
        ),
        "the Events that say why",
    )


def test_a_service_never_overwrites_an_object_another_owner_holds(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """An operator's listener holds the name a Service's port would get: cmi used to write
    over it unconditionally; now the Service is refused and the listener kept (#14)."""
    cmi()
    taken_name = short_name(namespace, "cart", "grpc")
    operators = listener(taken_name, "TCP", 7000, lb="somewhere")
    store.put(operators)
    create(admin, namespace, service_body("cart", labels=EXPOSE))
    eventually(
        lambda: any(reason == "Refused" and "taken by another owner" in message
                    for reason, message in events(admin, namespace, "cart")),
        "the Service told its name is taken",
    )  # fmt: skip
    held = store.get(Listener, taken_name)
    assert held is not None
    assert held.obj == operators
    assert store.get(Service, f"{namespace}/cart") is None


def test_another_namespace_cannot_join_a_tenants_instance(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """tenant-b labels its Service with tenant-a's dedicated instance: it used to be served
    on tenant-a's VIP; now it is not exposed, and told only that no such instance is its to
    join (#14)."""
    cmi(namespace="")  # both tenants' namespaces watched
    vip = expose(admin, namespace, "a")["a"]
    other = f"{namespace}-b"
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": other}})
    instance = dedicated_name(namespace, "a")
    create(admin, other, service_body("thief", labels={"openslb.io/expose": instance}))
    eventually(
        lambda: any(reason == "InstanceNotFound" for reason, _ in events(admin, other, "thief")),
        "the thief told there is no such instance for it",
    )
    assert ingress_ip(admin, other, "thief") is None
    assert store.get(Service, f"{other}/thief") is None
    assert ingress_ip(admin, namespace, "a") == vip


def test_a_deleted_operator_instance_frees_its_vip_after_the_grace(
    cmi: Start, store: Store
) -> None:
    """Deleted operators' instances used to keep their VIPs for ever (#14)."""
    running = cmi(release_grace_s=1)
    ops = LoadBalancer(name="ops", pool="default", owner=Owner(kind=OwnerKind.OPERATOR, name="o"))
    store.put(ops)
    eventually(lambda: store.get(LoadBalancer, "ops").obj.vip, "the instance's VIP")
    vip = store.get(LoadBalancer, "ops").obj.vip
    store.delete(LoadBalancer.kind, "ops")
    time.sleep(1.5)  # the grace
    store.put(ops.model_copy(update={"name": "next"}))  # any change: cmi reconciles
    eventually(lambda: running.controller.ipam.current("ops") is None, "the VIP freed")
    eventually(lambda: store.get(LoadBalancer, "next").obj.vip, "the next one's VIP")
    assert store.get(LoadBalancer, "next").obj.vip == vip  # the lowest free address again


def test_a_namespace_owns_at_most_its_quota_of_instances(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """One tenant labelling Service after Service would drain the VIP pool every tenant
    shares (#14): beyond `cmi.instances_per_namespace`, a Service is refused and told."""
    cmi(instances_per_namespace=2)
    exposed = expose(admin, namespace, "ab")
    create(admin, namespace, service_body("c", labels={"openslb.io/expose": "true"}))
    eventually(
        lambda: any(reason == "Refused" and "owns 2 instances already" in message
                    for reason, message in events(admin, namespace, "c")),
        "the third one told the namespace is at its quota",
    )  # fmt: skip
    assert ingress_ip(admin, namespace, "c") is None
    assert all(exposed.values())


def settled(admin: KubeClient, namespace: str, name: str, quiet_s: float = 2.0) -> None:
    """Wait until cmi has written the Service's status and Events and left it alone for
    `quiet_s`: what happens next is caused by the next change alone."""
    seen, since = "", time.monotonic()
    while time.monotonic() - since < quiet_s:
        version = svc(admin, namespace, name)["metadata"]["resourceVersion"]
        if version != seen:
            seen, since = version, time.monotonic()
        time.sleep(0.1)


def label_namespace(admin: KubeClient, namespace: str, labels: dict[str, str | None]) -> None:
    admin.request(
        "PATCH", f"/api/v1/namespaces/{namespace}", body={"metadata": {"labels": labels}},
        content_type="application/merge-patch+json",
    )  # fmt: skip


def test_a_namespace_joins_by_its_labels_and_leaves_when_relabelled(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """Gateway API's `from: Selector` (#14): an operator's instance admits the namespaces
    labelled team=retail. A Service of one joins it; relabelled team=media, the namespace no
    longer matches: the Service is withdrawn and told, as for any instance it may not join.
    The labels reach the store, so the LB nodes decide as cmi did."""
    label_namespace(admin, namespace, {"team": "retail"})
    teams = LoadBalancer(name="teams", pool="default",
                         owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
                         allowed_namespace_selector=LabelSelector.parse("team=retail"))  # fmt: skip
    store.put(teams)
    running = cmi()
    create(admin, namespace, service_body("cart", labels={"openslb.io/expose": "teams"}))
    eventually(lambda: store.get(Service, f"{namespace}/cart"), "joined by its namespace's labels")
    assert running.owned(f"{namespace}/cart")["Listener"]
    stored = store.get(Namespace, namespace)
    assert stored is not None
    assert stored.obj.labels.get("team") == "retail"

    settled(admin, namespace, "cart")  # nothing but the relabel makes cmi look again
    label_namespace(admin, namespace, {"team": "media"})
    eventually(lambda: store.get(Service, f"{namespace}/cart") is None, "withdrawn on relabel")
    assert not running.owned(f"{namespace}/cart")["Listener"]
    eventually(
        lambda: any(reason == "InstanceNotFound" and "teams" in message
                    for reason, message in events(admin, namespace, "cart")),
        "the Service told it may no longer join",
    )  # fmt: skip
    relabelled = store.get(Namespace, namespace)
    assert relabelled is not None
    assert relabelled.obj.labels.get("team") == "media"

    label_namespace(admin, namespace, {"team": "retail"})  # and back: it joins again
    eventually(lambda: store.get(Service, f"{namespace}/cart"), "joined again")


def test_a_namespace_owns_at_most_its_quota_of_listeners(
    cmi: Start, admin: KubeClient, namespace: str, store: Store
) -> None:
    """One tenant exposing port after port would fill every LB node's IPVS and Envoy
    (#14): beyond `cmi.listeners_per_namespace`, a Service is refused and told, and the
    listeners already served stay."""
    cmi(listeners_per_namespace=2)
    two_ports = [{"name": "grpc", "port": 50051, "appProtocol": "grpc"},
                 {"name": "admin", "port": 9000}]  # fmt: skip
    create(admin, namespace, service_body("a", labels={"openslb.io/expose": "true"},
                                          ports=two_ports))  # fmt: skip
    eventually(lambda: ingress_ip(admin, namespace, "a"), "the first exposed")
    vip = ingress_ip(admin, namespace, "a")
    create(admin, namespace, service_body("b", labels={"openslb.io/expose": "true"}))
    eventually(
        lambda: any(reason == "Refused" and "cmi.listeners_per_namespace" in message
                    for reason, message in events(admin, namespace, "b")),
        "the second told the namespace is at its listener quota",
    )  # fmt: skip
    assert store.get(Service, f"{namespace}/b") is None
    assert ingress_ip(admin, namespace, "b") is None
    owner = f"{namespace}/a"
    served = {s.obj.port for s in store.all(Listener).values() if s.obj.owner.name == owner}
    assert served == {50051, 9000}
    assert ingress_ip(admin, namespace, "a") == vip
