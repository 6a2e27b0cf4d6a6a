"""The Gateway API against a real kube-apiserver (its CRDs installed) and Redis: cmi, as its
least-privilege ServiceAccount, serves Gateways of its class and the HTTPRoutes naming them,
and writes their status as the specification says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cmi.gateway import CONTROLLER_NAME, GROUP, NOT_FOUND_RULE, ROUTE_RESOURCES, instance_name
from cmi.k8s.client import KubeClient
from cmi.k8s.writer import FINALIZER
from devbed.l7harness import (
    Bed,
    channel,
    der,
    http_get,
    https_get,
    served_certificate,
    wait_for_answer,
    who,
)
from devbed.process import wait_until
from slb.model import Listener, LoadBalancer, OwnerKind, Service
from slb.resolve import resolve
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from tests.cmi.conftest import Running, service_body, slice_body
from tests.cmi.test_controller import put_slice
from tests.cmi.test_tls_secrets import (
    HOST,
    RENEWED,
    SITE,
    https_slice,
    put_secret,
    secret_body,
    serves,
)
from tests.l7.conftest import bed, net  # noqa: F401  (the L7 bed's fixtures)

Start = Callable[..., Running]
API = f"/apis/{GROUP}/v1"


def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    found: list[Any] = []

    def holds() -> bool:
        found[:] = [check()]
        return bool(found[0])

    wait_until(holds, timeout, what, interval=0.05)
    return found[0]


def apply(admin: KubeClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create, or replace the test's own fields (server-side apply: cmi's status writes
    in between are no conflict)."""
    query = {"fieldManager": "tests", "force": "true"}
    return admin.request("PATCH", f"{path}/{body['metadata']['name']}", body=body,
                         content_type="application/apply-patch+yaml", query=query)  # fmt: skip


def gateway_class(admin: KubeClient, name: str, controller: str = CONTROLLER_NAME) -> None:
    apply(admin, f"{API}/gatewayclasses", {
        "apiVersion": f"{GROUP}/v1", "kind": "GatewayClass", "metadata": {"name": name},
        "spec": {"controllerName": controller},
    })  # fmt: skip


def gateway(admin: KubeClient, namespace: str, name: str, class_name: str, **extra: Any) -> None:
    listeners = extra.pop("listeners", [{"name": "http", "port": 8080, "protocol": "HTTP"}])
    apply(admin, f"{API}/namespaces/{namespace}/gateways", {
        "apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {"gatewayClassName": class_name, "listeners": listeners, **extra},
    })  # fmt: skip


def route(
    admin: KubeClient, namespace: str, name: str, spec: dict[str, Any], kind: str = "HTTPRoute"
) -> None:
    apply(admin, f"{API}/namespaces/{namespace}/{ROUTE_RESOURCES[kind]}", {
        "apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": name},
        "spec": spec,
    })  # fmt: skip


def status(admin: KubeClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    scope = f"namespaces/{namespace}/" if namespace else ""
    return admin.get(f"{API}/{scope}{plural}/{name}").get("status") or {}


def conditions(status_of: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status_of.get("conditions") or []}


def parent(
    admin: KubeClient, namespace: str, name: str, kind: str = "HTTPRoute"
) -> dict[str, tuple[str, str]]:
    """The conditions of openslb's entry in a route's `status.parents`."""
    parents = status(admin, namespace, ROUTE_RESOURCES[kind], name).get("parents") or []
    ours = [p for p in parents if p["controllerName"] == CONTROLLER_NAME]
    return conditions(ours[0]) if ours else {}


def backend(admin: KubeClient, namespace: str, name: str, addresses: list[str]) -> None:
    """A ClusterIP Service no label exposes, with endpoints on port 8080."""
    ports = [{"name": "grpc", "port": 80, "targetPort": 8080}]
    admin.request("POST", f"/api/v1/namespaces/{namespace}/services",
                  body=service_body(name, ports=ports, type_="ClusterIP"))  # fmt: skip
    admin.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                  body=slice_body(name, f"{name}-1", addresses))  # fmt: skip


def bed_backend(admin: KubeClient, namespace: str, name: str, address: str, port: int) -> None:
    """A ClusterIP Service no label exposes, port 80, whose endpoint is a bed's backend."""
    admin.request("POST", f"/api/v1/namespaces/{namespace}/services",
                  body=service_body(name, ports=[{"name": "app", "port": 80}],
                                    type_="ClusterIP"))  # fmt: skip
    put_slice(admin, namespace, https_slice(address, port) | {
        "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
        "ports": [{"name": "app", "port": port, "protocol": "TCP"}]})  # fmt: skip


def start_on_bed(cmi: Start, bed: Bed) -> None:  # noqa: F811
    """cmi with a VIP pool of the bed's addresses (Envoy binds to the Gateway's VIP, so each
    is added to the bed first), the xDS server and an Envoy."""
    for host in range(1, 15):
        bed.net.address(host)
    cmi(pool_cidrs=f"198.19.{bed.net.octet}.0/28")
    bed.xds.start()
    bed.envoy("n1")


def gateway_address(admin: KubeClient, namespace: str, name: str) -> str:
    return str(eventually(lambda: (status(admin, namespace, "gateways", name).get("addresses")
                                   or [{}])[0].get("value"), "the Gateway's address"))  # fmt: skip


@pytest.fixture
def class_name(admin: KubeClient, namespace: str) -> str:
    """A GatewayClass of openslb's for this test (classes are cluster-wide)."""
    name = f"openslb-{namespace}"
    gateway_class(admin, name)
    return name


def test_a_gateway_and_its_route_are_served_with_the_status_the_specification_asks(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, class_name: str
) -> None:
    running = cmi()
    backend(admin, namespace, "web", ["198.18.5.1", "198.18.5.2"])
    gateway(admin, namespace, "edge", class_name)
    route(admin, namespace, "shop", {
        "parentRefs": [{"name": "edge"}],
        "hostnames": ["shop.example"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}],
                   "backendRefs": [{"name": "web", "port": 80}]}],
    })  # fmt: skip

    # The class is accepted; the Gateway gets a VIP and says so, with its listener's routes.
    eventually(lambda: conditions(status(admin, "", "gatewayclasses", class_name)).get(
        "Accepted") == ("True", "Accepted"), "the class accepted")  # fmt: skip

    def attached() -> dict[str, Any] | None:
        now = status(admin, namespace, "gateways", "edge")
        listeners = now.get("listeners") or [{}]
        return now if now.get("addresses") and listeners[0].get("attachedRoutes") else None

    gw = eventually(attached, "the Gateway's address and its route")
    balancer = store.get(LoadBalancer, instance_name(namespace, "edge"))
    assert balancer is not None
    assert balancer.obj.owner.kind is OwnerKind.GATEWAY
    assert gw["addresses"] == [{"type": "IPAddress", "value": str(balancer.obj.vip)}]
    # Programmed once the data planes serve it: no Envoy has said so yet.
    assert conditions(gw) == {"Accepted": ("True", "Accepted"),
                              "Programmed": ("False", "Pending")}  # fmt: skip
    StatusBoard(store).report("l7", "envoy-1", "default", store.revision())
    gw = eventually(lambda: (now := status(admin, namespace, "gateways", "edge")) and conditions(
        now)["Programmed"] == ("True", "Programmed") and now, "Programmed")  # fmt: skip
    (listener_status,) = gw["listeners"]
    assert listener_status["attachedRoutes"] == 1
    assert listener_status["supportedKinds"] == [
        {"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}]  # fmt: skip
    generation = admin.get(f"{API}/namespaces/{namespace}/gateways/edge")["metadata"]["generation"]
    assert {c["observedGeneration"] for c in gw["conditions"]} == {generation}

    # The route is accepted, its reference resolved; the listener routes by it, then 404s.
    eventually(lambda: parent(admin, namespace, "shop") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")},
        "the route accepted")  # fmt: skip
    (listener,) = [
        s.obj for s in store.all(Listener).values()
        if s.obj.load_balancer == balancer.obj.name
    ]  # fmt: skip
    assert (listener.port, listener.owner.name) == (8080, f"{namespace}/edge")
    first, last = listener.routes
    assert (first.hosts, first.path_segments) == (("shop.example",), "/cart")
    assert [str(t) for t in first.forward_to] == [f"service {namespace}/web"]
    assert last.name == NOT_FOUND_RULE
    assert last.fixed_response is not None
    assert last.fixed_response.status == 404

    # The backend Service is stored for its endpoints; its own status is not openslb's.
    key = f"{namespace}/web"
    stored = eventually(lambda: running.owned(key).get("Service", {}).get(key), "the backend")
    assert isinstance(stored, Service)
    assert sorted(b.address.compressed for b in stored.backends["grpc"]) == [
        "198.18.5.1", "198.18.5.2"]  # fmt: skip
    body = admin.get(f"/api/v1/namespaces/{namespace}/services/web")
    assert FINALIZER not in (body["metadata"].get("finalizers") or [])
    assert not (body.get("status") or {}).get("conditions")


def test_a_missing_backend_answers_500_until_it_exists(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, class_name: str
) -> None:
    cmi()
    gateway(admin, namespace, "edge", class_name)
    route(admin, namespace, "late", {
        "parentRefs": [{"name": "edge"}],
        "rules": [{"backendRefs": [{"name": "later", "port": 80}]}],
    })  # fmt: skip
    eventually(lambda: parent(admin, namespace, "late").get("ResolvedRefs")
               == ("False", "BackendNotFound"), "BackendNotFound")  # fmt: skip

    def first_rule() -> Any:
        found = [s.obj for s in store.all(Listener).values()
                 if s.obj.owner.name == f"{namespace}/edge"]  # fmt: skip
        return found[0].routes[0] if found else None

    rule = eventually(first_rule, "the Gateway's listener")
    assert rule.fixed_response is not None
    assert rule.fixed_response.status == 500
    backend(admin, namespace, "later", ["198.18.5.3"])
    eventually(lambda: parent(admin, namespace, "late").get("ResolvedRefs")
               == ("True", "ResolvedRefs"), "resolved once the Service exists")  # fmt: skip
    rule = eventually(lambda: (r := first_rule()) and r.forward_to and r, "forwarding")
    assert [str(t) for t in rule.forward_to] == [f"service {namespace}/later"]


def test_what_openslb_cannot_serve_is_refused_in_the_status_that_asked(
    cmi: Start, admin: KubeClient, namespace: str, class_name: str
) -> None:
    cmi()
    listeners = [{"name": "http", "port": 8080, "protocol": "HTTP"},
                 {"name": "sctp", "port": 5353, "protocol": "SCTP"},
                 {"name": "tls", "port": 8443, "protocol": "TLS",
                  "tls": {"mode": "Terminate", "certificateRefs": [{"name": "x"}]}}]  # fmt: skip
    gateway(admin, namespace, "edge", class_name, listeners=listeners)
    extension = {"group": "x.example", "kind": "Y", "name": "z"}
    route(admin, namespace, "mirrored", {
        "parentRefs": [{"name": "edge"}],
        "rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": extension}]}],
    })  # fmt: skip
    route(admin, namespace, "nowhere", {
        "parentRefs": [{"name": "edge", "sectionName": "missing"}],
        "rules": [{}],
    })  # fmt: skip
    eventually(lambda: parent(admin, namespace, "mirrored").get("Accepted")
               == ("False", "UnsupportedValue"), "the filter refused")  # fmt: skip
    eventually(lambda: parent(admin, namespace, "nowhere").get("Accepted")
               == ("False", "NoMatchingParent"), "no such listener")  # fmt: skip
    gw = status(admin, namespace, "gateways", "edge")
    by_name = {entry["name"]: conditions(entry) for entry in gw["listeners"]}
    assert by_name["http"]["Accepted"] == ("True", "Accepted")
    assert by_name["sctp"]["Accepted"] == ("False", "UnsupportedProtocol")
    # TLS Terminate is served, but not without the certificate its Secret would hold
    assert by_name["tls"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert by_name["tls"]["Programmed"] == ("False", "Invalid")


def test_another_controllers_gateway_is_left_alone(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, class_name: str
) -> None:
    cmi()
    other = f"other-{namespace}"
    gateway_class(admin, other, controller="example.com/another")
    gateway(admin, namespace, "theirs", other)
    gateway(admin, namespace, "ours", class_name)
    eventually(lambda: status(admin, namespace, "gateways", "ours").get("addresses"), "ours")
    assert store.get(LoadBalancer, instance_name(namespace, "theirs")) is None
    pending = ("Unknown", "Pending")  # as the API server defaults them
    assert conditions(status(admin, namespace, "gateways", "theirs"))["Programmed"] == pending
    assert conditions(status(admin, "", "gatewayclasses", other))["Accepted"] == pending


def test_a_gateway_past_its_namespaces_quota_keeps_what_it_was_served_with(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, class_name: str
) -> None:
    cmi(listeners_per_namespace=1)

    def ports() -> list[int]:
        return sorted(s.obj.port for s in store.all(Listener).values()
                      if s.obj.owner.name == f"{namespace}/edge")  # fmt: skip

    gateway(admin, namespace, "edge", class_name)
    eventually(lambda: ports() == [8080], "the Gateway's listener")
    two = [{"name": "http", "port": 8080, "protocol": "HTTP"},
           {"name": "more", "port": 8081, "protocol": "HTTP"}]  # fmt: skip
    gateway(admin, namespace, "edge", class_name, listeners=two)
    accepted = eventually(
        lambda: (c := [c for c in status(admin, namespace, "gateways", "edge")["conditions"]
                       if c["type"] == "Accepted"]) and c[0]["status"] == "False" and c[0],
        "the Gateway refused",
    )  # fmt: skip
    assert accepted["reason"] == "Invalid"
    assert "cmi.listeners_per_namespace" in accepted["message"]
    assert ports() == [8080]  # kept, not withdrawn
    assert store.get(LoadBalancer, instance_name(namespace, "edge")) is not None


@pytest.mark.parametrize(("protocol", "kind"), [("HTTPS", "HTTPRoute"), ("TLS", "TLSRoute")])
def test_a_terminating_listener_serves_its_secrets_certificate_through_envoy_and_follows_a_renewal(
    cmi: Start,
    admin: KubeClient,
    namespace: str,
    store: Store,
    class_name: str,
    bed: Bed,  # noqa: F811
    protocol: str,
    kind: str,
) -> None:
    """HTTPS, or TLS (mode Terminate: Envoy forwards the plain stream, here HTTP/1.1)."""
    (web,) = bed.backends(["web1"])
    put_secret(admin, namespace, secret_body(SITE))
    bed_backend(admin, namespace, "web", web.address, web.http_port)
    start_on_bed(cmi, bed)
    listeners = [{"name": "tls", "port": 8443, "protocol": protocol, "hostname": HOST,
                  "tls": {"certificateRefs": [{"name": "site"}]}}]  # fmt: skip
    gateway(admin, namespace, "edge", class_name, listeners=listeners)
    route(admin, namespace, "site", {
        "parentRefs": [{"name": "edge"}], "hostnames": [HOST],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}],
    }, kind=kind)  # fmt: skip
    address = gateway_address(admin, namespace, "edge")

    eventually(lambda: serves(address, SITE), "Envoy serving the Secret's certificate")
    status_code, body = https_get(address, 8443, HOST)
    assert (status_code, body.strip()) == (200, "web1")
    (entry,) = status(admin, namespace, "gateways", "edge")["listeners"]
    assert conditions(entry)["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert entry["attachedRoutes"] == 1

    put_secret(admin, namespace, secret_body(RENEWED))  # cert-manager renews
    eventually(lambda: serves(address, RENEWED), "Envoy serving the renewed certificate")
    assert https_get(address, 8443, HOST)[0] == 200


def test_a_gateway_a_route_no_longer_names_takes_its_entry_out_of_the_routes_status(
    cmi: Start, admin: KubeClient, namespace: str, class_name: str
) -> None:
    cmi()
    gateway(admin, namespace, "first", class_name)
    gateway(admin, namespace, "second", class_name)

    def parents() -> list[str]:
        found = status(admin, namespace, "httproutes", "hop").get("parents") or []
        return sorted(p["parentRef"]["name"] for p in found
                      if p["controllerName"] == CONTROLLER_NAME)  # fmt: skip

    route(admin, namespace, "hop", {"parentRefs": [{"name": "first"}], "rules": [{}]})
    eventually(lambda: parents() == ["first"], "the route's entry for the first Gateway")
    route(admin, namespace, "hop", {"parentRefs": [{"name": "second"}], "rules": [{}]})
    eventually(lambda: parents() == ["second"], "the first Gateway's entry taken out")
    admin.request("DELETE", f"{API}/namespaces/{namespace}/gateways/second")
    eventually(lambda: parents() == [], "a deleted Gateway's entry taken out")


def test_a_grpc_route_and_an_http_route_share_a_hostname_through_envoy(
    cmi: Start,
    admin: KubeClient,
    namespace: str,
    store: Store,
    class_name: str,
    bed: Bed,  # noqa: F811
) -> None:
    """A GRPCRoute takes the gRPC calls to its host (over h2c to its backends), an HTTPRoute
    of the same name the other requests; both are told they are accepted."""
    calls, site = bed.backends(["g1", "w1"])
    bed_backend(admin, namespace, "calls", calls.address, calls.grpc_port)
    bed_backend(admin, namespace, "web", site.address, site.http_port)
    start_on_bed(cmi, bed)
    gateway(admin, namespace, "edge", class_name)
    both = {"parentRefs": [{"name": "edge"}], "hostnames": ["shop.example"]}
    route(
        admin,
        namespace,
        "site",
        {**both, "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
    )
    route(admin, namespace, "site", {**both, "rules": [{
        "matches": [{"method": {"service": "openslb.test.Echo"}}],
        "backendRefs": [{"name": "calls", "port": 80}]}]}, kind="GRPCRoute")  # fmt: skip
    address = gateway_address(admin, namespace, "edge")
    accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    eventually(lambda: parent(admin, namespace, "site", "GRPCRoute") == accepted, "GRPCRoute")
    assert parent(admin, namespace, "site") == accepted

    target = f"{address}:8080"
    wait_for_answer(target, {"g1"}, authority="shop.example")
    with channel(target, **{"grpc.default_authority": "shop.example"}) as chan:
        assert {who(chan) for _ in range(10)} == {"g1"}
    assert http_get(address, 8080, "shop.example") == (200, "w1")
    (entry,) = status(admin, namespace, "gateways", "edge")["listeners"]
    assert entry["attachedRoutes"] == 2


def test_a_tls_passthrough_listener_sends_each_tlsroutes_connections_to_its_backends(
    cmi: Start,
    admin: KubeClient,
    namespace: str,
    class_name: str,
    bed: Bed,  # noqa: F811
) -> None:
    """The backends terminate TLS: the client sees the certificate of the backend whose
    TLSRoute names the server name it sent."""
    first, second = bed.backends(["s1", "s2"], tls_port=50443)
    bed_backend(admin, namespace, "first", first.address, 50443)
    bed_backend(admin, namespace, "second", second.address, 50443)
    start_on_bed(cmi, bed)
    listeners = [{"name": "tls", "port": 8443, "protocol": "TLS", "hostname": "*.shop.example",
                  "tls": {"mode": "Passthrough"}}]  # fmt: skip
    gateway(admin, namespace, "edge", class_name, listeners=listeners)
    for name, host in (("first", "one.shop.example"), ("second", "*.shop.example")):
        route(admin, namespace, name, {
            "parentRefs": [{"name": "edge"}], "hostnames": [host],
            "rules": [{"backendRefs": [{"name": name, "port": 80}]}],
        }, kind="TLSRoute")  # fmt: skip
    address = gateway_address(admin, namespace, "edge")
    accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    eventually(lambda: parent(admin, namespace, "first", "TLSRoute") == accepted, "TLSRoute")

    def sees(sni: str) -> bytes:
        return served_certificate(address, 8443, sni)[0]

    eventually(lambda: sees("one.shop.example") == der(first.tls_certificate()), "passthrough")
    assert sees("two.shop.example") == der(second.tls_certificate())
    (entry,) = status(admin, namespace, "gateways", "edge")["listeners"]
    assert entry["supportedKinds"] == [{"group": GROUP, "kind": "TLSRoute"}]
    assert entry["attachedRoutes"] == 2


def test_tcp_and_udp_listeners_bind_the_oldest_route_and_ipvs_gets_its_weighted_backends(
    cmi: Start, admin: KubeClient, namespace: str, store: Store, class_name: str
) -> None:
    """A TCP and a UDP listener on one port number; the TCPRoute splits 1:3 between two
    Services; a newer TCPRoute on the same listener is accepted but gets no connections."""
    cmi()
    backend(admin, namespace, "one", ["198.18.5.1", "198.18.5.2"])
    backend(admin, namespace, "three", ["198.18.5.3"])
    listeners = [{"name": "db", "port": 5432, "protocol": "TCP"},
                 {"name": "dns", "port": 5432, "protocol": "UDP"}]  # fmt: skip
    gateway(admin, namespace, "edge", class_name, listeners=listeners)
    route(admin, namespace, "db", {
        "parentRefs": [{"name": "edge", "sectionName": "db"}],
        "rules": [{"backendRefs": [{"name": "one", "port": 80, "weight": 1},
                                   {"name": "three", "port": 80, "weight": 3}]}],
    }, kind="TCPRoute")  # fmt: skip
    route(admin, namespace, "dns", {
        "parentRefs": [{"name": "edge"}],
        "rules": [{"backendRefs": [{"name": "three", "port": 80}]}],
    }, kind="UDPRoute")  # fmt: skip
    accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    eventually(lambda: parent(admin, namespace, "db", "TCPRoute") == accepted, "TCPRoute")
    eventually(lambda: parent(admin, namespace, "dns", "UDPRoute") == accepted, "UDPRoute")
    route(admin, namespace, "newer", {
        "parentRefs": [{"name": "edge", "sectionName": "db"}],
        "rules": [{"backendRefs": [{"name": "one", "port": 80}]}],
    }, kind="TCPRoute")  # fmt: skip
    eventually(lambda: parent(admin, namespace, "newer", "TCPRoute") == accepted, "the newer")

    def attached() -> dict[str, tuple[int, list[str]]]:
        entries = status(admin, namespace, "gateways", "edge").get("listeners") or []
        return {e["name"]: (e["attachedRoutes"], [k["kind"] for k in e["supportedKinds"]])
                for e in entries}  # fmt: skip

    expected = {"db": (2, ["TCPRoute"]), "dns": (1, ["UDPRoute"])}
    eventually(lambda: attached() == expected, "both counted on the TCP listener")

    def served() -> dict[tuple[int, str], list[tuple[str, int]]]:
        state = resolve(store.snapshot())
        return {
            (r.listener.port, r.listener.protocol.transport): [
                (b.address.compressed, b.weight) for b in r.backends]
            for r in state.listeners if r.listener.owner.name == f"{namespace}/edge"
        }  # fmt: skip

    eventually(lambda: len(served()) == 2, "both listeners resolved")
    assert served() == {
        (5432, "TCP"): [("198.18.5.1", 1250), ("198.18.5.2", 1250), ("198.18.5.3", 7500)],
        (5432, "UDP"): [("198.18.5.3", 10000)],
    }  # the newer route's Service "one" gets nothing more
    tcp = next(
        s.obj
        for s in store.all(Listener).values()
        if s.obj.owner.name == f"{namespace}/edge" and s.obj.protocol.transport == "TCP"
    )
    assert tcp.scheduler.value == "wrr"
    # Programmed once IPVS serves it: the L4 tier's report, not an Envoy's.
    StatusBoard(store).report("l4", "lb-1", "default", store.revision())
    eventually(lambda: conditions(status(admin, namespace, "gateways", "edge")).get(
        "Programmed") == ("True", "Programmed"), "Programmed")  # fmt: skip
    admin.request("DELETE", f"{API}/namespaces/{namespace}/tcproutes/db")
    eventually(
        lambda: served().get((5432, "TCP")) == [("198.18.5.1", 5000), ("198.18.5.2", 5000)],
        "the newer route bound once the older went",
    )
