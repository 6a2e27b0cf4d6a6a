"""cmi's pure build step: a labelled Service, its EndpointSlices and the Nodes -> desired state."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from cmi import annotation
from cmi.build import (
    MANAGED_BY_LABEL,
    SLICE_CONTROLLER,
    Defaults,
    Previous,
    build,
    dedicated_name,
    short_name,
)
from slb.model import LoadBalancer, Owner, OwnerKind, Protocol
from slb.selector import LabelSelector

NOW = 1_800_000_000.0
DEFAULTS = Defaults(endpoint_slices_from=frozenset({"*"}))  # the slices here are hand-made
EXPOSED = {"app": "cart", annotation.EXPOSE_LABEL: "true"}
SHARED = LoadBalancer(
    name="public",
    vip="198.18.0.10",
    pool="default",
    owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
    allowed_namespaces=("shop",),
)


def service(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop", "name": "cart", "creationTimestamp": "2026-01-02T03:04:05Z",
            "labels": EXPOSED if labels is None else labels,
            "annotations": annotations or {},
        },
        "spec": {
            "ports": ports if ports is not None else [
                {"name": "grpc", "port": 50051, "protocol": "TCP", "appProtocol": "grpc",
                 "targetPort": 8080, "nodePort": 30051},
                {"name": "metrics", "port": 9090, "protocol": "TCP", "nodePort": 30090},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
            ],
            **spec,
        },
    }  # fmt: skip


def endpoint_slice(
    endpoints: list[tuple[str, str, dict[str, bool]]], address_type: str = "IPv4"
) -> dict[str, Any]:
    return {
        "addressType": address_type,
        "ports": [{"name": "grpc", "port": 8080}, {"name": "metrics", "port": 9090},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": [ip], "nodeName": name, "conditions": cond}
            for ip, name, cond in endpoints
        ],
    }  # fmt: skip


def node(name: str, ip: str, ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
        "spec": spec,
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
        },
    }


READY = {"ready": True}


def run(body: dict[str, Any], slices: list[dict[str, Any]] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    return build(
        body,
        slices=slices or [],
        nodes=kw.pop("nodes", {}),
        defaults=kw.pop("defaults", DEFAULTS),
        previous=kw.pop("previous", Previous()),
        instances=kw.pop("instances", {"public": SHARED}),
        namespace_labels=kw.pop("namespace_labels", None),
        now=kw.pop("now", NOW),
    )


def test_expose_true_gets_a_dedicated_instance_and_a_listener_per_port() -> None:
    built = run(
        service(), [endpoint_slice([("198.18.1.1", "n1", READY), ("198.18.1.2", "n2", READY)])]
    )
    assert built.exposed
    assert built.instance == dedicated_name("shop", "cart")
    assert built.dedicated is not None
    assert built.dedicated.vip is None
    assert built.dedicated.pool == "default"
    assert built.dedicated.owner == Owner(kind=OwnerKind.SERVICE, name="shop/cart")
    protocols = {li.port: (li.protocol, li.target_port) for li in built.listeners}
    assert protocols == {
        50051: (Protocol.GRPC, "grpc"),
        9090: (Protocol.TCP, "metrics"),
        53: (Protocol.UDP, "dns"),
    }
    assert built.service is not None
    assert [str(b.address) for b in built.service.backends["grpc"]] == ["198.18.1.1", "198.18.1.2"]
    assert all(li.created_at == NOW for li in built.listeners)  # claimed now, not at creation
    assert built.events == ()


def test_another_value_shares_an_existing_instance() -> None:
    built = run(service(labels={annotation.EXPOSE_LABEL: "public"}))
    assert built.exposed
    assert built.instance == "public"
    assert built.dedicated is None
    assert {li.load_balancer for li in built.listeners} == {"public"}
    missing = run(service(labels={annotation.EXPOSE_LABEL: "nosuch"}))
    assert not missing.exposed
    assert [e.reason for e in missing.events] == ["InstanceNotFound"]


def test_a_service_joins_only_an_instance_its_namespace_may_use() -> None:
    """Another tenant's dedicated instance, or an operator's that does not list the
    namespace, is refused in the same words as one that does not exist (#14)."""
    theirs = LoadBalancer(
        name=dedicated_name("tenant-a", "web"), pool="default", namespace="tenant-a",
        owner=Owner(kind=OwnerKind.SERVICE, name="tenant-a/web"),
    )  # fmt: skip
    closed = SHARED.model_copy(update={"name": "closed", "allowed_namespaces": ()})
    everyone = SHARED.model_copy(update={"name": "everyone", "allowed_namespaces": ("*",)})
    instances = {i.name: i for i in (theirs, closed, everyone)}
    said = set()
    for name in (theirs.name, "closed", "nosuch"):
        built = run(service(labels={annotation.EXPOSE_LABEL: name}), instances=instances)
        assert not built.exposed
        assert [e.reason for e in built.events] == ["InstanceNotFound"]
        said.add(built.events[0].message.replace(name, "NAME"))
    assert len(said) == 1  # nothing tells them apart
    joined = run(service(labels={annotation.EXPOSE_LABEL: "everyone"}), instances=instances)
    assert joined.instance == "everyone"
    mine = run(service())
    assert mine.dedicated is not None
    assert mine.dedicated.namespace == "shop"
    assert mine.dedicated.admits("shop")
    assert not mine.dedicated.admits("tenant-a")


def test_a_namespace_joins_by_its_labels_and_a_served_service_waits_for_unknown_ones() -> None:
    """An instance with `allowed_namespace_selector` admits the namespaces whose labels it
    matches; one that does not match is told what one that does not exist is told; a served
    Service whose namespace's labels cmi does not know (yet) keeps what it had (#14)."""
    teams = SHARED.model_copy(update={
        "name": "teams", "allowed_namespaces": (),
        "allowed_namespace_selector": LabelSelector.parse("team=retail"),
    })  # fmt: skip
    instances = {"teams": teams}
    body = service(labels={annotation.EXPOSE_LABEL: "teams", "app": "cart"})
    joined = run(body, instances=instances, namespace_labels={"team": "retail"})
    assert joined.exposed
    assert joined.instance == "teams"
    assert joined.service is not None
    assert not joined.events
    other = run(body, instances=instances, namespace_labels={"team": "media"})
    nosuch = run(service(labels={annotation.EXPOSE_LABEL: "nosuch"}), instances=instances)
    assert not other.exposed
    assert [e.reason for e in other.events] == ["InstanceNotFound"]
    assert other.events[0].message.replace("teams", "X") == nosuch.events[0].message.replace(
        "nosuch", "X"
    )
    served = Previous(service=joined.service, listeners={li.name: li for li in joined.listeners})
    kept = run(body, instances=instances, previous=served)  # labels unknown
    assert kept.exposed
    assert kept.service == joined.service
    assert kept.listeners == joined.listeners
    assert kept.refused is not None
    assert "labels of namespace shop are not known yet" in kept.refused
    assert not run(body, instances=instances).exposed  # nothing served: nothing kept


def test_generated_names_carry_64_bits_of_hash() -> None:
    name = dedicated_name("shop", "cart")
    assert len(name.rsplit("-", 1)[1]) == 16
    assert dedicated_name("shop-c", "art") != dedicated_name("shop", "c-art")


def test_unlabelled_or_deleted_services_own_nothing() -> None:
    assert not run(service(labels={"app": "cart"})).exposed
    deleting = service()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    assert not run(deleting).exposed


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ({"name": "web", "port": 80, "appProtocol": "http"}, (Protocol.HTTP, "http1")),
        ({"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"}, (Protocol.HTTP, "h2c")),
        ({"name": "web", "port": 80, "appProtocol": "kubernetes.io/ws"}, (Protocol.HTTP, "http1")),
        ({"name": "grpc-api", "port": 80}, (Protocol.GRPC, "h2c")),
        ({"name": "http-web", "port": 80}, (Protocol.HTTP, "http1")),
        ({"name": "https", "port": 443}, (Protocol.TCP, None)),  # TLS passes through
        ({"name": "db", "port": 5432}, (Protocol.TCP, None)),
        ({"name": "grpc", "port": 53, "protocol": "UDP"}, (Protocol.UDP, None)),
    ],
)
def test_protocol_from_app_protocol_then_port_name_then_transport(
    port: dict[str, Any], expected: tuple[Protocol, str | None]
) -> None:
    (listener,) = run(service(ports=[port])).listeners
    backend = listener.backend_protocol.value if listener.backend_protocol else None
    assert (listener.protocol, backend) == expected


def test_https_with_certificates_terminates_tls() -> None:
    body = service(
        annotations={"openslb.io/certificates": "shop-tls", "openslb.io/tls-policy": "tls13"},
        ports=[{"name": "web", "port": 443, "appProtocol": "https"},
               {"name": "http", "port": 80, "appProtocol": "http"}],
    )  # fmt: skip
    listener, plain = run(body).listeners
    assert listener.protocol is Protocol.HTTPS
    assert listener.certificates == ("shop-tls",)
    assert (listener.tls_policy, plain.tls_policy) == ("tls13", "tls12")  # HTTPS ports only
    assert listener.upstream_protocol.value == "tls"


def test_annotations_tune_every_listener() -> None:
    body = service(
        annotations={
            "openslb.io/scheduler": "wlc",
            "openslb.io/health-check-type": "http",
            "openslb.io/health-check-path": "/healthz",
            "openslb.io/health-check-interval": "5s",
            "openslb.io/persistence": "source_ip",
            "openslb.io/request-timeout": "30",
            "openslb.io/idle-timeout": "60",
            "openslb.io/access-log": "true",
            "openslb.io/requests-per-second": "200",
            "openslb.io/max-connections": "500",
            "openslb.io/request-bandwidth": "256",
        }
    )
    built = run(body)
    tcp_ports = [li for li in built.listeners if li.protocol is not Protocol.UDP]
    assert {li.scheduler.value for li in built.listeners} == {"wlc"}
    assert all(li.health_check and li.health_check.path == "/healthz" for li in tcp_ports)
    assert all(li.health_check and li.health_check.interval_s == 5 for li in tcp_ports)
    grpc = next(li for li in built.listeners if li.protocol is Protocol.GRPC)
    metrics = next(li for li in built.listeners if li.port == 9090)
    assert grpc.request_timeout_s == 30
    assert metrics.request_timeout_s == 0  # a layer-7 setting does not reach TCP ports
    assert (grpc.idle_timeout_s, metrics.idle_timeout_s) == (60, 900)  # nor does Envoy's idle
    assert (grpc.access_log, metrics.access_log) == (True, False)  # nor the access log
    assert (grpc.limits.requests_per_second, grpc.limits.max_connections) == (200, 500)
    assert metrics.limits.max_connections == 500  # IPVS's thresholds take it
    assert metrics.limits.requests_per_second is None  # a request rate is for Envoy only
    assert (grpc.limits.request_bandwidth_kib_s, metrics.limits.request_bandwidth_kib_s) == (
        256, None)  # fmt: skip
    assert built.events == ()


def test_bad_annotations_keep_what_was_served_and_name_the_annotation() -> None:
    good = run(service(annotations={"openslb.io/scheduler": "wlc"}))
    previous = Previous(
        service=good.service,
        listeners={li.name: li for li in good.listeners},
        load_balancer=good.dedicated,
    )
    body = service(
        annotations={
            "openslb.io/scheduler": "fastest",
            "openslb.io/health-check-interval": "99",
            "openslb.io/idle-timeout": "10",
        },
        ports=[*service()["spec"]["ports"], {"name": "extra", "port": 7000}],
    )
    built = run(body, previous=previous)
    messages = [e.message for e in built.events]
    assert any(m.startswith("openslb.io/scheduler:") for m in messages)
    assert any(m.startswith("openslb.io/health-check-interval:") for m in messages)
    assert all(e.reason == "InvalidAnnotation" for e in built.events)
    # Nothing half-applied: the valid idle-timeout change waits with the rest.
    served = {li.name: li for li in good.listeners}
    for listener in built.listeners:
        if listener.name in served:
            assert listener == served[listener.name]
    # ... while the Service itself (its new port) is still served.
    assert {li.port for li in built.listeners} == {50051, 9090, 53, 7000}


def test_an_annotation_that_does_not_fit_a_port_keeps_that_port_as_served() -> None:
    body = service(annotations={"openslb.io/scheduler": "random"})
    built = run(body)
    assert [li.protocol for li in built.listeners] == [Protocol.GRPC]  # random is L7-only
    assert any("openslb.io/scheduler: port 9090" in e.message for e in built.events)


WEB_PORTS = [
    {"name": "http", "port": 80, "appProtocol": "http"},
    {"name": "https", "port": 8443, "appProtocol": "https"},
    {"name": "grpc", "port": 50051, "appProtocol": "grpc"},
    {"name": "db", "port": 5432},
]


def test_rules_and_https_redirect_by_annotation() -> None:
    """#17: `openslb.io/rules` (the REST API's JSON) reaches the Service's layer-7 ports;
    `openslb.io/https-redirect` puts a redirect to its TLS port first on its HTTP ports."""
    rules = [{"name": "down", "path_regex": "/maintenance/.*",
              "fixed_response": {"status": 503, "body": "back soon"}},
             {"name": "admin", "grpc_service": "shop.Admin",
              "forward_to": [{"target_port": 9000}]}]  # fmt: skip
    body = service(
        annotations={"openslb.io/rules": json.dumps(rules), "openslb.io/https-redirect": "true",
                     "openslb.io/certificates": "shop-tls"},
        ports=WEB_PORTS,
    )  # fmt: skip
    built = run(body)
    by_port = {li.port: li for li in built.listeners}
    assert [r.name for r in by_port[80].routes] == ["to-https", "down", "admin"]
    to_https = by_port[80].routes[0].redirect
    assert to_https is not None
    assert (to_https.scheme, to_https.port, to_https.code) == ("https", 8443, 301)
    assert [r.name for r in by_port[8443].routes] == ["down", "admin"]
    assert [r.name for r in by_port[50051].routes] == ["down", "admin"]
    assert by_port[5432].routes == ()  # a TCP port has no rules
    assert built.events == ()


def test_bad_rule_annotations_name_the_annotation_and_keep_what_was_served() -> None:
    good = run(service(ports=WEB_PORTS))
    previous = Previous(service=good.service, listeners={li.name: li for li in good.listeners},
                        load_balancer=good.dedicated)  # fmt: skip
    for value, expected in (
        ("[{", "openslb.io/rules: not JSON"),
        ('{"name": "a"}', "openslb.io/rules: must be a JSON list"),
        ('[{"name": "a", "path_regex": "(a)\\\\1"}]', "openslb.io/rules: not an RE2"),
    ):
        built = run(service(annotations={"openslb.io/rules": value}, ports=WEB_PORTS),
                    previous=previous)  # fmt: skip
        assert [e.reason for e in built.events] == ["InvalidAnnotation"], value
        assert built.events[0].message.startswith(expected.split(": ")[0])
        assert expected.split(": ")[1] in built.events[0].message
        assert set(built.listeners) == set(good.listeners)
    # A rule that fits the HTTP port but not the GRPC one: that port keeps what it had.
    built = run(service(annotations={"openslb.io/rules": '[{"name": "a", "path_prefix": "/a"}]'},
                        ports=WEB_PORTS), previous=previous)  # fmt: skip
    assert [e.message.split(";")[0] for e in built.events] == [
        "openslb.io/rules: port 50051: GRPC listeners match grpc_service or path_regex, "
        "and answer gRPC"]  # fmt: skip
    grpc = next(li for li in built.listeners if li.port == 50051)
    assert grpc.routes == ()
    assert next(li for li in built.listeners if li.port == 80).routes[0].name == "a"


def test_unknown_annotations_are_reported_but_do_not_block() -> None:
    built = run(service(annotations={"openslb.io/schedular": "wlc"}))
    assert [e.reason for e in built.events] == ["UnknownAnnotation"]
    assert len(built.listeners) == 3


def test_terminating_endpoints_are_kept_for_drain() -> None:
    terminating = {"ready": False, "serving": True, "terminating": True}
    slices = [
        endpoint_slice([("198.18.1.1", "n1", READY), ("198.18.1.2", "n1", terminating)]),
        endpoint_slice([("2001:db8::1", "n2", READY)], address_type="IPv6"),
        endpoint_slice([("cart.example", "n3", READY)], address_type="FQDN"),
    ]
    built = run(service(), slices)
    assert built.service is not None
    grpc = built.service.backends["grpc"]
    assert [(str(b.address), b.conditions.terminating) for b in grpc] == [
        ("198.18.1.1", False),
        ("198.18.1.2", True),
        ("2001:db8::1", False),
    ]


def test_node_mode_with_local_policy() -> None:
    nodes = {
        "n1": node("n1", "198.18.2.1"),
        "n2": node("n2", "198.18.2.2"),
        "n3": node("n3", "198.18.2.3", ready=False),
        "n4": node("n4", "198.18.2.4", unschedulable=True),
        "n5": node("n5", "198.18.2.5"),
    }
    slices = [
        endpoint_slice(
            [("198.18.1.1", "n1", READY), ("198.18.1.2", "n1", READY), ("198.18.1.3", "n2", READY),
             ("198.18.1.4", "n3", READY), ("198.18.1.5", "n4", READY),
             ("198.18.1.6", "n5", {"ready": False})]
        )
    ]  # fmt: skip
    local = service(annotations={"openslb.io/backend-mode": "node"}, externalTrafficPolicy="Local")
    built = run(local, slices, nodes=nodes)
    assert built.service is not None
    assert built.service.backend_mode == "node"
    assert [(str(b.address), b.port, b.weight) for b in built.service.backends["grpc"]] == [
        ("198.18.2.1", 30051, 2),
        ("198.18.2.2", 30051, 1),
    ]
    cluster = copy.deepcopy(local)
    cluster["spec"]["externalTrafficPolicy"] = "Cluster"
    built = run(cluster, slices, nodes=nodes)
    assert built.service is not None
    assert [str(b.address) for b in built.service.backends["grpc"]] == [
        "198.18.2.1", "198.18.2.2", "198.18.2.5",
    ]  # fmt: skip
    keep_unschedulable = Defaults(exclude_unschedulable=False)
    built = run(cluster, slices, nodes=nodes, defaults=keep_unschedulable)
    assert built.service is not None
    assert "198.18.2.4" in [str(b.address) for b in built.service.backends["grpc"]]


def test_explicit_vip_and_names() -> None:
    built = run(service(annotations={"openslb.io/vip": "198.18.0.77"}))
    assert built.dedicated is not None
    assert str(built.dedicated.vip) == "198.18.0.77"
    bad = run(service(annotations={"openslb.io/vip": "not-an-ip"}))
    assert [e.reason for e in bad.events] == ["InvalidAnnotation"]
    assert "openslb.io/vip" in bad.events[0].message
    assert short_name("a-b", "c") != short_name("a", "b-c")
    assert len(short_name("x" * 60, "y" * 60)) <= 63


def labelled(slice_: dict[str, Any], managed_by: str) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": "cart", MANAGED_BY_LABEL: managed_by}
    return {**slice_, "metadata": {"name": f"cart-{managed_by}", "labels": labels}}


def backend_addresses(built: Any) -> set[str]:
    return {str(b.address) for b in built.service.backends.get("grpc", ())}


def test_only_the_endpointslice_controllers_slices_count_by_default() -> None:
    """A tenant who may write EndpointSlices must not point its VIP anywhere it likes (#14):
    without `cmi.endpoint_slices_from`, only the controller's slices of a Service with a
    selector are used."""
    ours = labelled(endpoint_slice([("198.18.1.1", "n1", READY)]), SLICE_CONTROLLER)
    forged = labelled(endpoint_slice([("198.18.7.7", "n1", READY)]), "someone-else")
    selected = service(selector={"app": "cart"})
    built = run(selected, [ours, forged], defaults=Defaults())
    assert backend_addresses(built) == {"198.18.1.1"}
    assert [e.reason for e in built.events] == ["EndpointSlicesIgnored"]
    assert "1 EndpointSlice(s)" in built.events[0].message
    no_selector = run(service(), [ours], defaults=Defaults())  # the controller makes none
    assert backend_addresses(no_selector) == set()
    allowed = Defaults(endpoint_slices_from=frozenset({"shop"}))
    assert backend_addresses(run(service(), [ours, forged], defaults=allowed)) == {
        "198.18.1.1", "198.18.7.7"
    }  # fmt: skip


def test_endpoints_in_ranges_openslb_keeps_are_refused() -> None:
    slice_ = endpoint_slice([
        ("198.18.1.1", "n1", READY), ("127.0.0.1", "n1", READY), ("169.254.169.254", "n1", READY),
        ("198.18.0.9", "n1", READY), ("::1", "n1", READY),
    ])  # fmt: skip
    defaults = Defaults(
        endpoint_slices_from=frozenset({"*"}),
        refused_backends=(ipaddress.ip_network("198.18.0.0/24"),),  # the VIP pool
    )
    built = run(service(), [slice_], defaults=defaults)
    assert backend_addresses(built) == {"198.18.1.1"}
    refused = [e for e in built.events if e.reason == "EndpointsRefused"]
    assert len(refused) == 1
    assert "4 endpoint address(es) refused (127.0.0.1, 169.254.169.254, 198.18.0.9, ::1)" in (
        refused[0].message
    )
