"""The pure translation of the Gateway API (`cmi.gateway`): Gateway listeners and HTTPRoute
rules into openslb's model, in the specification's precedence, and the status it asks for."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest

from cmi import tlssecret
from cmi.build import VIP_UNAVAILABLE, Defaults, Event, Previous
from cmi.gateway import (
    CONTROLLER_NAME,
    GROUP,
    NOT_FOUND_RULE,
    GatewayBuilt,
    backend_services,
    build_gateway,
    gateway_status,
    granted,
    hostnames,
    route_parents,
)
from devbed.pki import Pair, self_signed
from slb.model import (
    MAX_ROUTES,
    BackendProtocol,
    Listener,
    OwnerKind,
    Protocol,
    Route,
    Scheduler,
)

CLASS = {"metadata": {"name": "openslb", "generation": 1},
         "spec": {"controllerName": CONTROLLER_NAME}}  # fmt: skip
HTTP = {"name": "http", "port": 80, "protocol": "HTTP"}


def gw(*listeners: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "edge", "generation": 4},
        "spec": {"gatewayClassName": "openslb", "listeners": list(listeners or [HTTP]), **spec},
    }


def httproute(
    name: str, *rules: dict[str, Any], namespace: str = "shop", **spec: Any
) -> dict[str, Any]:
    return {
        "kind": "HTTPRoute",
        "metadata": {"namespace": namespace, "name": name, "generation": 2,
                     "creationTimestamp": spec.pop("created", "2026-01-01T00:00:00Z")},
        "spec": {"parentRefs": spec.pop("parents", [{"name": "edge", "namespace": "shop"}]),
                 "rules": list(rules), **spec},
    }  # fmt: skip


def grpcroute(name: str, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**httproute(name, *rules, **spec), "kind": "GRPCRoute"}


def svc(namespace: str, name: str, port: int = 80) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name},
            "spec": {"ports": [{"port": port}]}}  # fmt: skip


SERVICES = {f"shop/{n}": svc("shop", n) for n in ("a", "b", "c")}


def build(
    *routes: dict[str, Any], gateway: dict[str, Any] | None = None, **kw: Any
) -> GatewayBuilt:
    return build_gateway(
        gateway or gw(),
        gateway_class=kw.pop("gateway_class", CLASS),
        routes=list(routes),
        services=kw.pop("services", SERVICES),
        namespace_labels=kw.pop("namespace_labels", {}),
        defaults=Defaults(),
        previous=kw.pop("previous", Previous()),
        **kw,
    )


def to(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": 80, **extra}


def rules_of(made: GatewayBuilt) -> list[Route]:
    (listener,) = made.built.listeners
    return list(listener.routes)


def accepted(made: GatewayBuilt, route: str) -> tuple[str, str]:
    (entry,) = made.routes[route]
    first = entry["conditions"][0]
    return first["status"], first["reason"]


def test_precedence_exact_then_longest_prefix_then_method_headers_and_query() -> None:
    def match(path: tuple[str, str] | None = None, **m: Any) -> dict[str, Any]:
        if path is not None:
            m["path"] = {"type": path[0], "value": path[1]}
        return m

    made = build(
        httproute("r", {"matches": [
            match(("PathPrefix", "/a")),
            match(("PathPrefix", "/a/b")),
            match(("Exact", "/a")),
            match(("PathPrefix", "/a"), method="GET"),
            match(("PathPrefix", "/a"), headers=[{"name": "x", "value": "1"}]),
            match(("PathPrefix", "/a"), queryParams=[{"name": "q", "value": "1"}]),
        ], "backendRefs": [to("a")]}),
    )  # fmt: skip
    order = [
        (r.path_exact or r.path_segments, r.method, len(r.headers), len(r.query_params))
        for r in rules_of(made)[:-1]
    ]
    assert order == [("/a", None, 0, 0), ("/a/b", None, 0, 0), ("/a", "GET", 0, 0),
                     ("/a", None, 1, 0), ("/a", None, 0, 1), ("/a", None, 0, 0)]  # fmt: skip


def test_ties_go_to_the_oldest_route_then_by_name_and_every_listener_ends_in_404() -> None:
    rule = {"backendRefs": [to("a")]}
    made = build(
        httproute("young", rule, created="2026-02-01T00:00:00Z"),
        httproute("old", {"backendRefs": [to("b")]}, created="2025-01-01T00:00:00Z"),
    )
    rules = rules_of(made)
    assert [str(r.forward_to[0]) for r in rules[:2]] == ["service shop/b", "service shop/a"]
    assert rules[-1].name == NOT_FOUND_RULE
    assert rules[-1].fixed_response is not None
    assert rules[-1].fixed_response.status == 404
    (listener,) = made.built.listeners
    assert listener.owner.kind is OwnerKind.GATEWAY
    assert listener.selector is None


def test_exact_hostnames_before_wildcards_before_any() -> None:
    rule = {"backendRefs": [to("a")]}
    made = build(
        httproute("any", rule),
        httproute("wild", rule, hostnames=["*.example.com"]),
        httproute("exact", rule, hostnames=["shop.example.com"]),
    )
    assert [r.hosts for r in rules_of(made)[:-1]] == [
        ("shop.example.com",), ("*.example.com",), ()]  # fmt: skip


@pytest.mark.parametrize(
    ("listener", "route", "hosts"),
    [
        (None, [], []),
        ("a.example.com", [], ["a.example.com"]),
        (None, ["a.example.com"], ["a.example.com"]),
        ("*.example.com", ["a.example.com", "other.org"], ["a.example.com"]),
        ("a.example.com", ["*.example.com"], ["a.example.com"]),
        ("*.example.com", ["*.a.example.com"], ["*.a.example.com"]),
        ("a.example.com", ["b.example.com"], None),
        ("*.example.com", ["example.com"], None),
    ],
)
def test_hostnames_intersect_as_the_specification_says(
    listener: str | None, route: list[str], hosts: list[str] | None
) -> None:
    gateway_listener = {**HTTP, **({"hostname": listener} if listener else {})}
    assert hostnames(gateway_listener, {"spec": {"hostnames": route}}) == hosts


def test_filters_become_header_changes_redirects_and_host_rewrites() -> None:
    made = build(
        httproute("r", {
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "filters": [{"type": "RequestRedirect",
                         "requestRedirect": {"scheme": "https", "statusCode": 301}}],
        }, {
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Env", "value": "prod"}], "remove": ["x-debug"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "add": [{"name": "x-served-by", "value": "openslb"}]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.example"}},
            ],
            "backendRefs": [to("a", weight=3), to("b", weight=1)],
        }),
    )  # fmt: skip
    redirect, forward = rules_of(made)[:2]
    assert redirect.redirect is not None
    assert (redirect.redirect.scheme, redirect.redirect.code) == ("https", 301)
    assert [(h.name, h.value) for h in forward.request_headers.set] == [("x-env", "prod")]
    assert forward.request_headers.remove == ("x-debug",)
    assert [(h.name, h.value) for h in forward.response_headers.add] == [
        ("x-served-by", "openslb")]  # fmt: skip
    assert forward.rewrite is not None
    assert forward.rewrite.host == "internal.example"
    assert [(t.service, t.target_port, t.weight) for t in forward.forward_to] == [
        ("shop/a", 80, 3), ("shop/b", 80, 1)]  # fmt: skip


def test_an_unsupported_filter_refuses_the_route_not_the_gateway() -> None:
    extension = {"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}
    made = build(httproute("bad", {"filters": [extension], "backendRefs": [to("a")]}),
                 httproute("good", {"backendRefs": [to("a")]}))  # fmt: skip
    assert accepted(made, "HTTPRoute/shop/bad") == ("False", "UnsupportedValue")
    assert accepted(made, "HTTPRoute/shop/good") == ("True", "Accepted")
    assert len(rules_of(made)) == 2  # good's, and the 404


def test_request_mirrors_copy_a_share_of_requests_to_their_services() -> None:
    def mirror(ref: dict[str, Any], **share: Any) -> dict[str, Any]:
        return {"type": "RequestMirror", "requestMirror": {"backendRef": ref, **share}}

    made = build(httproute("r", {"filters": [
        mirror(to("b")), mirror(to("c"), percent=25),
        mirror(to("a"), fraction={"numerator": 1, "denominator": 3}),
        mirror(to("nope")), mirror(to("b"), percent=0),
    ], "backendRefs": [to("a")]}))  # fmt: skip
    (rule, _) = rules_of(made)
    assert [(m.to.service, m.to.target_port, round(m.percent, 2)) for m in rule.mirrors] == [
        ("shop/b", 80, 100), ("shop/c", 80, 25), ("shop/a", 80, 33.33)]  # fmt: skip
    (entry,) = made.routes["HTTPRoute/shop/r"]
    assert entry["conditions"][0]["status"] == "True"  # served, without the missing mirror
    assert entry["conditions"][1]["reason"] == "BackendNotFound"
    assert "shop/nope" in backend_services(httproute("r", {"filters": [mirror(to("nope"))]}))


def test_backend_refs_that_do_not_resolve_answer_500_and_say_why() -> None:
    made = build(
        httproute("missing", {"backendRefs": [to("nope")]}),
        httproute("port", {"backendRefs": [{"name": "a", "port": 81}]}),
        httproute(
            "kind", {"backendRefs": [{"name": "a", "port": 80, "kind": "Pod", "group": "x"}]}
        ),
    )
    reasons = {k: v[0]["conditions"][1]["reason"] for k, v in made.routes.items()}
    assert reasons == {"HTTPRoute/shop/missing": "BackendNotFound",
                       "HTTPRoute/shop/port": "BackendNotFound",
                       "HTTPRoute/shop/kind": "InvalidKind"}  # fmt: skip
    assert {accepted(made, k) for k in made.routes} == {("True", "Accepted")}
    statuses = {r.fixed_response.status for r in rules_of(made) if r.fixed_response}
    assert statuses == {500, 404}


def test_another_namespace_needs_allowed_routes_and_a_reference_grant() -> None:
    services = {**SERVICES, "db/a": svc("db", "a")}
    foreign = httproute("r", {"backendRefs": [to("a", namespace="db")]}, namespace="team")
    same_only = build(foreign, services=services)
    assert accepted(same_only, "HTTPRoute/team/r") == ("False", "NotAllowedByListeners")

    selected = {**HTTP, "allowedRoutes": {"namespaces": {
        "from": "Selector", "selector": {"matchLabels": {"shared": "yes"}}}}}  # fmt: skip
    made = build(foreign, gateway=gw(selected), services=services,
                 namespace_labels={"team": {"shared": "yes"}})  # fmt: skip
    assert made.routes["HTTPRoute/team/r"][0]["conditions"][1]["reason"] == "RefNotPermitted"

    grant = {"metadata": {"namespace": "db", "name": "g"}, "spec": {
        "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "team"}],
        "to": [{"group": "", "kind": "Service"}]}}  # fmt: skip
    made = build(foreign, gateway=gw(selected), services=services,
                 namespace_labels={"team": {"shared": "yes"}}, grants=[grant])  # fmt: skip
    assert made.routes["HTTPRoute/team/r"][0]["conditions"][1]["reason"] == "ResolvedRefs"
    assert made.built.dedicated is not None
    assert made.built.dedicated.allowed_namespaces == ("db",)  # its routes' Services' alone
    assert not granted("other", "db", "a", [grant], kind="HTTPRoute")


def test_listeners_of_one_port_share_an_openslb_listener_and_unknown_protocols_are_refused() -> (
    None
):
    made = build(
        httproute("r", {"backendRefs": [to("a")]}),
        gateway=gw({**HTTP, "hostname": "a.example"},
                   {**HTTP, "name": "b", "hostname": "b.example"},
                   {"name": "sctp", "port": 53, "protocol": "SCTP"}),
    )  # fmt: skip
    (listener,) = made.built.listeners
    assert isinstance(listener, Listener)
    assert [r.hosts for r in listener.routes[:-1]] == [("a.example",), ("b.example",)]
    by_name = {s["name"]: s for s in made.listeners}
    assert by_name["sctp"]["conditions"][0]["reason"] == "UnsupportedProtocol"
    gateway_accepted = made.conditions[0]
    assert (gateway_accepted["status"], gateway_accepted["reason"]) == ("True", "ListenersNotValid")
    only_invalid = build(gateway=gw({"name": "sctp", "port": 53, "protocol": "SCTP"}))
    assert only_invalid.conditions[0]["status"] == "False"
    assert by_name["http"]["attachedRoutes"] == by_name["b"]["attachedRoutes"] == 1
    assert (
        made.routes["HTTPRoute/shop/r"][0]["conditions"][0]["status"] == "True"
    )  # one entry per ref


def test_a_gateway_of_another_class_is_not_openslbs() -> None:
    other = {"metadata": {"name": "x"}, "spec": {"controllerName": "example.com/x"}}
    made = build(gateway_class=other)
    assert (made.built.exposed, made.built.foreign, made.built.listeners) == (False, True, ())


def test_status_programmed_waits_for_the_vip_and_the_data_planes() -> None:
    made = build(httproute("r", {"backendRefs": [to("a")]}))
    waiting = gateway_status(made, None, 4)
    assert waiting["addresses"] == []
    assert waiting["conditions"][-1]["reason"] == "AddressNotAssigned"
    vip = "198.18.0.7"
    programmed = {
        ready: gateway_status(made, vip, 4, ready=(ready, f"{ready}!") if ready else None)
        for ready in (None, "pending", "error", "served")
    }
    assert {k: (v["conditions"][-1]["status"], v["conditions"][-1]["reason"],
                v["conditions"][-1]["message"]) for k, v in programmed.items()} == {
        None: ("False", "Pending", "waiting for the data planes"),
        "pending": ("False", "Pending", "pending!"), "error": ("False", "Invalid", "error!"),
        "served": ("True", "Programmed", f"served at {vip}"),
    }  # fmt: skip
    assert programmed["pending"]["addresses"] == [{"type": "IPAddress", "value": vip}]
    no_listener = build(gateway=gw({"name": "sctp", "port": 9000, "protocol": "SCTP"}))
    assert gateway_status(no_listener, vip, 4)["conditions"][-1]["status"] == "True"


def test_a_gateway_whose_store_was_lost_asks_for_the_address_its_status_names() -> None:
    """Its VIP outlives the store in `status.addresses` (the first IP address there); once
    the store has the instance, or `spec.addresses` asks for one, nothing is remembered."""
    lost = gw()
    lost["status"] = {"addresses": [{"type": "Hostname", "value": "edge.example.test"},
                                    {"type": "IPAddress", "value": "198.18.0.7"}]}  # fmt: skip
    assert str(build(gateway=lost).built.remembered_vip) == "198.18.0.7"
    assert build().built.remembered_vip is None
    balancer = build(gateway=lost).built.dedicated
    assert balancer is not None
    kept = balancer.model_copy(update={"vip": "198.18.0.4"})
    assert build(gateway=lost, previous=Previous(load_balancer=kept)).built.remembered_vip is None
    pinned = {**gw(addresses=[{"type": "IPAddress", "value": "198.18.0.5"}]),
              "status": lost["status"]}  # fmt: skip
    made = build(gateway=pinned).built
    assert made.remembered_vip is None
    assert made.dedicated is not None
    assert str(made.dedicated.vip) == "198.18.0.5"


def test_route_parents_keep_other_entries() -> None:
    made = build(httproute("r", {"backendRefs": [to("a")]}))

    theirs = {"parentRef": {"name": "edge"}, "controllerName": "example.com/x", "conditions": []}
    ours_elsewhere = {"parentRef": {"name": "other"}, "controllerName": CONTROLLER_NAME,
                      "conditions": []}  # fmt: skip
    stale = {"parentRef": {"name": "edge"}, "controllerName": CONTROLLER_NAME, "conditions": []}
    route = {"metadata": {"namespace": "shop", "name": "r"},
             "status": {"parents": [theirs, ours_elsewhere, stale]}}  # fmt: skip
    new = made.routes["HTTPRoute/shop/r"]
    assert route_parents(route, "shop/edge", new) == [theirs, ours_elsewhere, *new]


def test_a_rule_the_model_refuses_refuses_its_route_alone() -> None:
    bad = {"matches": [{"headers": [{"name": "host", "value": "x"}]}], "backendRefs": [to("a")]}
    made = build(httproute("bad", bad), httproute("good", {"backendRefs": [to("b")]}))
    (entry,) = made.routes["HTTPRoute/shop/bad"]
    assert entry["conditions"][0]["reason"] == "UnsupportedValue"
    assert "headers.0.name" in entry["conditions"][0]["message"]
    assert accepted(made, "HTTPRoute/shop/good") == ("True", "Accepted")
    assert [str(r.forward_to[0]) for r in rules_of(made)[:-1]] == ["service shop/b"]


def test_past_the_rules_a_port_holds_the_last_in_precedence_are_left_out_and_said() -> None:
    matches = [{"path": {"type": "Exact", "value": f"/p{i}"}} for i in range(64)]
    routes = [httproute(f"r{i:03}", {"matches": matches, "backendRefs": [to("a")]})
              for i in range(160)]  # fmt: skip
    made = build(*routes)
    assert len(rules_of(made)) == MAX_ROUTES  # MAX_RULES and the 404
    (event,) = made.built.events
    assert (event.reason, "10240 rules" in event.message) == ("TooManyRules", True)


SITE = self_signed("shop.example.test")


def tls_secret(namespace: str, name: str, pair: Pair = SITE) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"metadata": {"namespace": namespace, "name": name}, "type": tlssecret.SECRET_TYPE,
            "data": {"tls.crt": b64(pair.chain_pem), "tls.key": b64(pair.key_pem)}}  # fmt: skip


def https(*refs: dict[str, Any], port: int = 443) -> dict[str, Any]:
    return {"name": f"https-{port}", "port": port, "protocol": "HTTPS",
            "tls": {"certificateRefs": list(refs)}}  # fmt: skip


def listener_conditions(made: GatewayBuilt, name: str) -> dict[str, tuple[str, str]]:
    (entry,) = [e for e in made.listeners if e["name"] == name]
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}


def test_an_https_listener_terminates_tls_with_its_secrets_certificates() -> None:
    made = build(httproute("r", {"backendRefs": [to("a")]}), gateway=gw(https({"name": "site"})),
                 secrets={"shop/site": tls_secret("shop", "site")})  # fmt: skip
    (listener,) = made.built.listeners
    (pair,) = made.built.certificates
    assert (listener.protocol, listener.port) == (Protocol.HTTPS, 443)
    assert listener.certificates == (pair.certificate.name,)
    assert pair.key_pem is not None  # new: the controller stores it before the certificate
    assert (pair.certificate.owner.kind, pair.certificate.namespace) == (OwnerKind.GATEWAY, "shop")
    assert listener_conditions(made, "https-443")["ResolvedRefs"] == ("True", "ResolvedRefs")


def test_certificate_refs_that_cannot_be_used_leave_the_listener_unprogrammed() -> None:
    grant = {"metadata": {"namespace": "certs", "name": "g"}, "spec": {
        "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop"}],
        "to": [{"group": "", "kind": "Secret"}]}}  # fmt: skip
    secrets = {"certs/site": tls_secret("certs", "site")}
    gateway = gw(
        https({"name": "missing"}), https({"name": "site", "namespace": "certs"}, port=8443)
    )
    made = build(gateway=gateway, secrets=secrets)
    assert listener_conditions(made, "https-443")["ResolvedRefs"] == (
        "False", "InvalidCertificateRef")  # fmt: skip
    assert listener_conditions(made, "https-443")["Programmed"] == ("False", "Invalid")
    assert listener_conditions(made, "https-8443")["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert made.built.listeners == ()
    granted_made = build(gateway=gateway, secrets=secrets, grants=[grant])
    assert [li.port for li in granted_made.built.listeners] == [8443]


def test_http_and_https_on_one_port_conflict() -> None:
    made = build(gateway=gw(HTTP, https({"name": "site"}, port=80)),
                 secrets={"shop/site": tls_secret("shop", "site")})  # fmt: skip
    assert listener_conditions(made, "https-80")["Conflicted"] == ("True", "ProtocolConflict")
    (listener,) = made.built.listeners
    assert listener.protocol is Protocol.HTTP


def test_a_secret_gone_bad_keeps_the_certificate_served_before() -> None:
    gateway = gw(https({"name": "site"}))
    first = build(gateway=gateway, secrets={"shop/site": tls_secret("shop", "site")})
    (pair,) = first.built.certificates
    previous = Previous(
        load_balancer=first.built.dedicated,
        listeners={li.name: li for li in first.built.listeners},
        certificates={pair.certificate.name: pair.certificate},
    )
    broken = {"shop/site": {**tls_secret("shop", "site"), "data": {"tls.crt": "", "tls.key": ""}}}
    again = build(gateway=gateway, secrets=broken, previous=previous)
    (kept,) = again.built.certificates
    assert (kept.certificate, kept.key_pem) == (pair.certificate, None)
    assert [li.certificates for li in again.built.listeners] == [(pair.certificate.name,)]
    conditions = listener_conditions(again, "https-443")
    assert conditions["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert conditions["Programmed"] == ("True", "Programmed")


def test_a_listener_allows_only_the_route_kinds_it_names() -> None:
    tcp_only = {**HTTP, "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}
    made = build(httproute("r", {"backendRefs": [to("a")]}), gateway=gw(tcp_only))
    assert accepted(made, "HTTPRoute/shop/r") == ("False", "NotAllowedByListeners")
    (entry,) = made.listeners
    assert entry["supportedKinds"] == []
    assert listener_conditions(made, "http")["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    both = {**HTTP, "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}, {"kind": "TCPRoute"}]}}
    made = build(httproute("r", {"backendRefs": [to("a")]}), gateway=gw(both))
    assert accepted(made, "HTTPRoute/shop/r") == ("True", "Accepted")
    assert made.listeners[0]["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]


def test_routes_attach_to_a_listener_its_certificates_leave_unprogrammed() -> None:
    made = build(httproute("r", {"backendRefs": [to("a")]}), gateway=gw(https({"name": "gone"})))
    (entry,) = made.listeners
    assert entry["attachedRoutes"] == 1
    assert listener_conditions(made, "https-443")["Programmed"] == ("False", "Invalid")
    assert made.built.listeners == ()  # nothing served on the port


def test_a_vip_that_cannot_be_had_is_said_in_programmed() -> None:
    made = build(gateway=gw(HTTP, addresses=[{"type": "IPAddress", "value": "198.18.9.9"}]))
    taken = Event("Warning", VIP_UNAVAILABLE, "198.18.9.9 is held by another instance")
    refused = replace(made.built, exposed=False, dedicated=None, listeners=(), events=(taken,))
    programmed = gateway_status(made, None, 4, refused)["conditions"][-1]
    assert (programmed["status"], programmed["reason"]) == ("False", "AddressNotUsable")
    assert "held by another instance" in programmed["message"]


def test_grpc_routes_match_calls_only_in_their_precedence_before_http_rules() -> None:
    def method(service: str = "", name: str = "", kind: str = "Exact") -> dict[str, Any]:
        return {"method": {"type": kind, **({"service": service} if service else {}),
                           **({"method": name} if name else {})}}  # fmt: skip

    made = build(
        httproute("api", {"backendRefs": [to("a")]}),
        grpcroute("api", {"matches": [
            method("shop.Cart"),
            method("shop.v1.Cart", "Get"),
            method(name="Ping"),
            method("shop\\.v[0-9]+\\.Cart", kind="RegularExpression"),
            {**method("shop.Cart"), "headers": [{"name": "version", "value": "two"}]},
        ], "backendRefs": [to("b")]}),
    )  # fmt: skip
    rules = rules_of(made)
    assert [r.grpc_only for r in rules] == [True] * 5 + [False, False]
    grpc = [(r.grpc_service, r.grpc_method, r.path_regex, len(r.headers)) for r in rules[:5]]
    assert grpc == [
        (None, None, "/(?:shop\\.v[0-9]+\\.Cart)/(?:[^/]+)", 0),  # the longest service first
        ("shop.v1.Cart", "Get", None, 0),
        ("shop.Cart", None, None, 1),  # then the longest method, then the most headers
        ("shop.Cart", None, None, 0),
        (None, None, "/[^/]+/Ping", 0),
    ]
    assert len({r.name for r in rules}) == len(rules)  # a GRPCRoute and an HTTPRoute "api"
    assert {accepted(made, k) for k in made.routes} == {("True", "Accepted")}
    assert set(made.routes) == {"HTTPRoute/shop/api", "GRPCRoute/shop/api"}
    (listener,) = made.built.listeners
    assert [listener.route_upstream_is_http2(r) for r in rules[-3:-1]] == [True, False]
    assert made.listeners[0]["supportedKinds"] == [
        {"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}]  # fmt: skip


def test_grpc_routes_need_a_listener_allowing_them_and_a_grant_of_their_own_kind() -> None:
    http_only = {**HTTP, "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}}
    made = build(grpcroute("calls", {"backendRefs": [to("a")]}), gateway=gw(http_only))
    assert accepted(made, "GRPCRoute/shop/calls") == ("False", "NotAllowedByListeners")

    services = {**SERVICES, "db/a": svc("db", "a")}
    routed = grpcroute("calls", {"backendRefs": [to("a", namespace="db")]})
    grant = {"metadata": {"namespace": "db", "name": "g"}, "spec": {
        "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "shop"}],
        "to": [{"group": "", "kind": "Service"}]}}  # fmt: skip
    made = build(routed, services=services, grants=[grant])
    assert made.routes["GRPCRoute/shop/calls"][0]["conditions"][1]["reason"] == "RefNotPermitted"
    grant["spec"]["from"][0]["kind"] = "GRPCRoute"
    made = build(routed, services=services, grants=[grant])
    assert made.routes["GRPCRoute/shop/calls"][0]["conditions"][1]["reason"] == "ResolvedRefs"

    rewritten = {"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "x.example"}}],
                 "backendRefs": [to("a")]}  # fmt: skip
    made = build(grpcroute("rewrite", rewritten))  # an HTTPRoute's filter only
    assert accepted(made, "GRPCRoute/shop/rewrite") == ("False", "UnsupportedValue")
    mirrored = {"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": to("b")}}],
                "backendRefs": [to("a")]}  # fmt: skip
    made = build(grpcroute("mirror", mirrored))
    assert accepted(made, "GRPCRoute/shop/mirror") == ("True", "Accepted")
    assert [m.to.service for m in rules_of(made)[0].mirrors] == ["shop/b"]


def test_url_rewrites_and_redirects_replace_the_prefix_matched_or_the_whole_path() -> None:
    def rule(prefix: str, filter_: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "filters": [filter_], **extra}  # fmt: skip

    def rewrite(kind: str, value: str) -> dict[str, Any]:
        field = "replacePrefixMatch" if kind == "ReplacePrefixMatch" else "replaceFullPath"
        return {"type": "URLRewrite", "urlRewrite": {"path": {"type": kind, field: value}}}

    def redirect(kind: str, value: str) -> dict[str, Any]:
        field = "replacePrefixMatch" if kind == "ReplacePrefixMatch" else "replaceFullPath"
        return {"type": "RequestRedirect",
                "requestRedirect": {"path": {"type": kind, field: value}}}  # fmt: skip

    made = build(httproute(
        "r",
        rule("/prefix/one", rewrite("ReplacePrefixMatch", "/one"), backendRefs=[to("a")]),
        rule("/full/one", rewrite("ReplaceFullPath", "/one"), backendRefs=[to("a")]),
        rule("/moved", redirect("ReplacePrefixMatch", "/here")),
        rule("/page", redirect("ReplaceFullPath", "/elsewhere")),
    ))  # fmt: skip
    by_path = {r.path_segments: r for r in rules_of(made)[:-1]}
    assert by_path["/prefix/one"].rewrite is not None
    assert by_path["/prefix/one"].rewrite.path_prefix == "/one"
    assert by_path["/full/one"].rewrite is not None
    assert by_path["/full/one"].rewrite.path == "/one"
    assert by_path["/moved"].redirect is not None
    assert by_path["/moved"].redirect.path_prefix == "/here"
    assert by_path["/page"].redirect is not None
    assert by_path["/page"].redirect.path == "/elsewhere"

    exact = {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
             "filters": [rewrite("ReplacePrefixMatch", "/y")],
             "backendRefs": [to("a")]}  # fmt: skip
    refused = build(httproute("exact", exact))
    assert accepted(refused, "HTTPRoute/shop/exact") == ("False", "UnsupportedValue")


def test_backends_whose_service_port_says_h2c_or_wss_are_reached_over_http2_or_tls() -> None:
    ports = [{"port": 80}, {"port": 8081, "appProtocol": "kubernetes.io/h2c"},
             {"port": 8443, "appProtocol": "kubernetes.io/wss"}]  # fmt: skip
    h2c = {"metadata": {"namespace": "shop", "name": "h2"}, "spec": {"ports": ports}}
    services = {**SERVICES, "shop/h2": h2c}
    made = build(
        httproute("both-h2c", {"matches": [{"path": {"type": "Exact", "value": "/h2"}}],
                               "backendRefs": [to("h2", port=8081)]}),
        httproute("mixed", {"matches": [{"path": {"type": "Exact", "value": "/mixed"}}],
                            "backendRefs": [to("h2", port=8081), to("a")]}),
        httproute("plain", {"matches": [{"path": {"type": "Exact", "value": "/plain"}}],
                            "backendRefs": [to("h2")]}),
        httproute("wss", {"matches": [{"path": {"type": "Exact", "value": "/wss"}}],
                          "backendRefs": [to("h2", port=8443)]}),
        services=services,
    )  # fmt: skip
    upstream = {r.path_exact: r.backend_protocol for r in rules_of(made)[:-1]}
    assert upstream == {"/h2": BackendProtocol.H2C, "/mixed": None, "/plain": None,
                        "/wss": BackendProtocol.TLS}  # fmt: skip


PASSTHROUGH = {"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
               "tls": {"mode": "Passthrough"}}  # fmt: skip


def tlsroute(name: str, hosts: list[str], *refs: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**httproute(name, {"backendRefs": list(refs)}, hostnames=hosts, **spec),
            "kind": "TLSRoute"}  # fmt: skip


def test_a_tls_passthrough_listener_takes_tlsroutes_by_server_name() -> None:
    made = build(
        tlsroute("wide", ["*.example.com"], to("b")),
        tlsroute("abc", ["abc.example.com"], to("a"), to("c", weight=3)),
        tlsroute("gone", ["gone.example.com"], to("nope")),
        tlsroute("other", ["abc.example.org"], to("a")),
        httproute("web", {"backendRefs": [to("a")]}),
        gateway=gw(PASSTHROUGH),
    )
    (listener,) = made.built.listeners
    assert listener.protocol is Protocol.TLS
    assert [(r.hosts, [(t.service, t.weight) for t in r.forward_to]) for r in listener.routes] == [
        (("abc.example.com",), [("shop/a", 1), ("shop/c", 3)]),
        (("*.example.com",), [("shop/b", 1)]),
    ]  # exact before wildcard; no 404 rule: a connection no rule takes is closed
    assert accepted(made, "TLSRoute/shop/abc") == ("True", "Accepted")
    assert accepted(made, "TLSRoute/shop/other") == ("False", "NoMatchingListenerHostname")
    assert accepted(made, "HTTPRoute/shop/web") == ("False", "NotAllowedByListeners")
    (gone,) = made.routes["TLSRoute/shop/gone"]
    assert gone["conditions"][1]["reason"] == "BackendNotFound"
    (entry,) = made.listeners
    assert entry["supportedKinds"] == [{"group": GROUP, "kind": "TLSRoute"}]
    assert entry["attachedRoutes"] == 3


def test_a_tls_listener_that_terminates_serves_its_secret_and_forwards_by_server_name() -> None:
    terminate = {**PASSTHROUGH, "tls": {"mode": "Terminate", "certificateRefs": [{"name": "x"}]}}
    made = build(tlsroute("abc", ["abc.example.com"], to("a")), gateway=gw(terminate),
                 secrets={"shop/x": tls_secret("shop", "x")})  # fmt: skip
    (entry,) = made.listeners
    assert {c["type"]: c["status"] for c in entry["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True", "Programmed": "True"}  # fmt: skip
    assert entry["supportedKinds"] == [{"group": GROUP, "kind": "TLSRoute"}]
    (listener,) = made.built.listeners
    (pair,) = made.built.certificates
    assert (listener.protocol, listener.terminates_tls) == (Protocol.TLS, True)
    assert listener.certificates == (pair.certificate.name,)
    assert [(r.hosts, r.forward_to[0].service) for r in listener.routes] == [
        (("abc.example.com",), "shop/a")]  # fmt: skip
    on_http = build(tlsroute("abc", ["abc.example.com"], to("a")))
    assert accepted(on_http, "TLSRoute/shop/abc") == ("False", "NotAllowedByListeners")
    (http,) = on_http.listeners
    assert [k["kind"] for k in http["supportedKinds"]] == ["HTTPRoute", "GRPCRoute"]


def test_tls_listeners_that_terminate_and_pass_through_on_one_port_both_conflict() -> None:
    terminate = {**PASSTHROUGH, "name": "term", "hostname": "t.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "x"}]}}  # fmt: skip
    made = build(gateway=gw(PASSTHROUGH, terminate), secrets={"shop/x": tls_secret("shop", "x")})
    for entry in made.listeners:
        conditions = {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}
        assert conditions["Accepted"] == ("False", "ProtocolConflict"), entry["name"]
        assert entry["supportedKinds"] == []
    assert made.built.listeners == ()
    apart = build(gateway=gw(PASSTHROUGH, {**terminate, "port": 8443}),
                  secrets={"shop/x": tls_secret("shop", "x")})  # fmt: skip
    assert [li.terminates_tls for li in apart.built.listeners] == [False, True]


def l4route(kind: str, name: str, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**httproute(name, *rules, **spec), "kind": kind}


TCP = {"name": "db", "port": 5432, "protocol": "TCP"}
UDP = {"name": "dns", "port": 53, "protocol": "UDP"}
DNS_TCP = {"name": "dns-tcp", "port": 53, "protocol": "TCP"}


def test_tcp_and_udp_listeners_bind_the_oldest_routes_one_rule_by_weight() -> None:
    made = build(
        l4route("TCPRoute", "newer", {"backendRefs": [to("gone")]}, created="2026-02-01T00:00:00Z",
                parents=[{"name": "edge", "sectionName": "db"}]),
        l4route("TCPRoute", "db", {"backendRefs": [to("a", weight=1), to("b", weight=3),
                                                   to("nope")]},
                parents=[{"name": "edge", "sectionName": "db"}]),
        l4route("UDPRoute", "dns", {"backendRefs": [to("c")]}),
        l4route("TCPRoute", "two", {"backendRefs": [to("a")]}, {"backendRefs": [to("b")]},
                parents=[{"name": "edge", "sectionName": "dns-tcp"}]),
        httproute("web", {"backendRefs": [to("a")]}, parents=[{"name": "edge",
                                                              "sectionName": "db"}]),
        gateway=gw(TCP, UDP, DNS_TCP),
    )  # fmt: skip
    by_port = {(li.port, li.protocol): li for li in made.built.listeners}
    db, dns = by_port[5432, Protocol.TCP], by_port[53, Protocol.UDP]
    assert (db.scheduler, dns.scheduler) == (Scheduler.WRR, Scheduler.WRR)
    (rule,) = db.routes  # no 404 rule: IPVS answers nothing
    assert [(t.service, t.weight) for t in rule.forward_to] == [("shop/a", 1), ("shop/b", 3)]
    assert [t.service for r in dns.routes for t in r.forward_to] == ["shop/c"]
    assert by_port[53, Protocol.TCP].routes == ()  # its one route has two rules
    assert dns.name != by_port[53, Protocol.TCP].name  # TCP and UDP share the number
    assert accepted(made, "TCPRoute/shop/db") == ("True", "Accepted")
    (db_entry,) = made.routes["TCPRoute/shop/db"]
    assert db_entry["conditions"][1]["reason"] == "BackendNotFound"
    newer = made.routes["TCPRoute/shop/newer"][0]["conditions"][0]
    assert (newer["status"], newer["reason"]) == ("True", "Accepted")  # counted, not bound
    assert "older" in newer["message"]
    assert made.routes["TCPRoute/shop/newer"][0]["conditions"][1]["reason"] == "BackendNotFound"
    assert accepted(made, "TCPRoute/shop/two") == ("False", "UnsupportedValue")
    assert accepted(made, "HTTPRoute/shop/web") == ("False", "NotAllowedByListeners")
    kinds = {e["name"]: [k["kind"] for k in e["supportedKinds"]] for e in made.listeners}
    assert kinds == {"db": ["TCPRoute"], "dns": ["UDPRoute"], "dns-tcp": ["TCPRoute"]}
    attached = {e["name"]: e["attachedRoutes"] for e in made.listeners}
    assert attached == {"db": 2, "dns": 1, "dns-tcp": 0}


def test_a_second_tcp_listener_on_a_port_conflicts() -> None:
    made = build(gateway=gw(TCP, {**TCP, "name": "db2", "hostname": "db.example.com"}))
    first, second = (
        {c["type"]: (c["status"], c["reason"]) for c in e["conditions"]} for e in made.listeners
    )
    assert first["Accepted"] == ("True", "Accepted")
    assert second["Accepted"] == ("False", "HostnameConflict")
    assert second["Conflicted"] == ("True", "HostnameConflict")
    assert len(made.built.listeners) == 1


def test_a_weighted_rules_unresolved_backends_keep_their_share_answered_500() -> None:
    made = build(
        httproute(
            "r",
            {
                "backendRefs": [
                    to("a", weight=3),
                    to("nope", weight=1),
                    {"name": "b", "port": 81, "weight": 2},
                ]
            },
        )
    )
    (rule, _) = rules_of(made)
    assert [(t.service, t.weight) for t in rule.forward_to] == [("shop/a", 3)]
    assert rule.unresolved_weight == 3  # nope's 1 and b's missing port's 2
    (entry,) = made.routes["HTTPRoute/shop/r"]
    assert entry["conditions"][1]["reason"] == "BackendNotFound"


def test_a_hostname_a_listener_names_is_served_by_its_routes_alone() -> None:
    """Listener isolation: a.example.com's requests never fall through to the routes of
    the wildcard or hostless listeners on its port."""
    listeners = [{"name": n, "port": 80, "protocol": "HTTP", **({"hostname": h} if h else {})}
                 for n, h in (("any", None), ("wild", "*.example.com"),
                              ("abc", "abc.example.com"))]  # fmt: skip

    def on(section: str, path: str) -> dict[str, Any]:
        return httproute(
            section,
            {
                "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                "backendRefs": [to("a")],
            },
            parents=[{"name": "edge", "namespace": "shop", "sectionName": section}],
        )

    made = build(on("any", "/any"), on("wild", "/wild"), on("abc", "/abc"),
                 gateway=gw(*listeners))  # fmt: skip
    order = [(r.hosts, r.path_segments, r.fixed_response.status if r.fixed_response else None)
             for r in rules_of(made)]  # fmt: skip
    assert order == [
        (("abc.example.com",), "/abc", None),
        (("abc.example.com",), None, 404),  # isolation: not /wild's nor /any's
        (("*.example.com",), "/wild", None),
        (("*.example.com",), None, 404),
        ((), "/any", None),
        ((), None, 404),
    ]


def test_a_wider_listeners_routes_leave_out_the_hosts_of_narrower_listeners() -> None:
    listeners = [
        {"name": "any", "port": 80, "protocol": "HTTP"},
        {"name": "wild", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"},
    ]
    route = httproute("r", {"backendRefs": [to("a")]}, hostnames=[
        "bar.com", "*.example.com", "abc.example.com", "*.org"],
        parents=[{"name": "edge", "namespace": "shop", "sectionName": "any"}])  # fmt: skip
    made = build(route, gateway=gw(*listeners))
    hosts = [r.hosts for r in rules_of(made) if r.forward_to]
    # *.example.com and abc.example.com are the wildcard listener's; the exact name and the
    # wildcard each take their own place in the precedence
    assert hosts == [("bar.com",), ("*.org",)]
    assert accepted(made, "HTTPRoute/shop/r") == ("True", "Accepted")
