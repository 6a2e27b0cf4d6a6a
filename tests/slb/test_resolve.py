"""Resolution: which listener owns a port and which backends it forwards to."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from slb.model import KINDS, StoredObject
from slb.resolve import resolve
from slb.snapshot import Snapshot, Stored

OPERATOR = {"kind": "Operator", "name": "alice"}
Doc = tuple[str, dict[str, Any]]


def snapshot(*objects: tuple[str, dict[str, Any]], revision: int = 7) -> Snapshot:
    by_kind: dict[str, dict[str, Stored[StoredObject]]] = {}
    for kind, data in objects:
        obj = KINDS[kind].model_validate(data)
        by_kind.setdefault(kind, {})[obj.key] = Stored(obj, revision)
    return Snapshot(revision, by_kind)


def lb(name: str = "public", vip: str | None = "198.18.0.10", **extra: Any) -> Doc:
    data = {"name": name, "vip": vip, "pool": "default", "owner": OPERATOR,
            "allowed_namespaces": ["shop"]}  # fmt: skip
    return "LoadBalancer", {**data, **extra}


def listener(name: str, port: int = 80, **extra: Any) -> Doc:
    data = {
        "name": name, "load_balancer": "public", "protocol": "TCP", "port": port,
        "selector": {"match_labels": {"app": "web"}}, "target_port": "http", "owner": OPERATOR,
    }  # fmt: skip
    return "Listener", {**data, **extra}


def service(
    name: str, labels: dict[str, str], endpoints: list[dict[str, Any]], namespace: str = "shop"
) -> Doc:
    return "Service", {
        "namespace": namespace, "name": name, "labels": labels, "load_balancer": "public",
        "ports": [{"name": "http", "port": 80, "target_port": 8080}],
        "backends": {"http": endpoints},
    }  # fmt: skip


def ep(last: int, **extra: Any) -> dict[str, Any]:
    return {"address": f"198.18.1.{last}", "port": 8080, **extra}


def test_a_selector_gathers_the_endpoints_of_every_matching_service() -> None:
    state = resolve(
        snapshot(
            lb(),
            listener("web"),
            service("a", {"app": "web"}, [ep(2), ep(1)]),
            service("b", {"app": "web"}, [ep(3), ep(1)]),
            service("c", {"app": "db"}, [ep(9)]),
        )
    )
    assert state.revision == 7
    (served,) = state.listeners
    assert served.services == ("shop/a", "shop/b")
    assert [str(b.address) for b in served.backends] == ["198.18.1.1", "198.18.1.2", "198.18.1.3"]
    assert str(served.vip) == "198.18.0.10"


def test_a_selector_picks_only_services_of_namespaces_the_instance_admits() -> None:
    """#14: a tenant who labels its own Service `app=web` joins no other's `app=web`
    listener, nor its routes; the instance's owner namespace and `allowed_namespaces` may."""
    route = {"name": "api", "path_prefix": "/api",
             "forward_to": [{"selector": {"match_labels": {"app": "web"}}}]}  # fmt: skip
    objects = (
        listener("web", protocol="HTTP", routes=[route]),
        service("a", {"app": "web"}, [ep(1)]),
        service("intruder", {"app": "web"}, [ep(66)], namespace="tenant-b"),
    )
    (served,) = resolve(snapshot(lb(), *objects)).listeners
    assert served.services == ("shop/a",)
    assert [str(b.address) for b in served.backends] == ["198.18.1.1"]
    assert [r.services for r in served.routes] == [("shop/a",)]

    owned = lb(namespace="tenant-b", allowed_namespaces=[])
    (served,) = resolve(snapshot(owned, *objects)).listeners
    assert served.services == ("tenant-b/intruder",)
    closed = lb(allowed_namespaces=[])
    (served,) = resolve(snapshot(closed, *objects)).listeners
    assert (served.services, served.routes[0].services) == ((), ())

    # By a namespace selector: the labels cmi mirrors decide, and unknown labels admit none.
    by_label = lb(allowed_namespaces=[], allowed_namespace_selector="team=web")
    (served,) = resolve(snapshot(by_label, *objects)).listeners
    assert served.services == ()
    shop = ("Namespace", {"name": "shop", "labels": {"team": "web"}})
    intruder = ("Namespace", {"name": "tenant-b", "labels": {"team": "other"}})
    (served,) = resolve(snapshot(by_label, shop, intruder, *objects)).listeners
    assert (served.services, served.routes[0].services) == (("shop/a",), ("shop/a",))


def test_a_rule_may_name_one_service_which_the_instance_must_admit() -> None:
    """A named Service is picked whatever its labels; one of a namespace the instance does
    not admit is left out, as a selector would leave it."""
    route = {"name": "cart", "path_prefix": "/cart",
             "forward_to": [{"service": "shop/cart", "weight": 3},
                            {"service": "tenant-b/cart"}, {"service": "shop/gone"}]}  # fmt: skip
    objects = (
        listener("web", protocol="HTTP", routes=[route]),
        service("a", {"app": "web"}, [ep(1)]),
        service("cart", {}, [ep(5)]),
        service("cart", {}, [ep(66)], namespace="tenant-b"),
    )
    (served,) = resolve(snapshot(lb(), *objects)).listeners
    cart, intruder, gone = served.routes[0].targets
    assert (cart.services, [str(b.address) for b in cart.backends], cart.weight) == (
        ("shop/cart",), ["198.18.1.5"], 3,
    )  # fmt: skip
    assert (intruder.services, intruder.backends) == ((), ())
    assert (gone.services, gone.backends) == ((), ())
    assert served.services == ("shop/a",)  # the listener's own selector is untouched


def test_not_ready_endpoints_are_left_out_and_terminating_ones_drain() -> None:
    endpoints = [
        ep(1),
        ep(2, conditions={"ready": False, "serving": False, "terminating": False}),
        ep(3, conditions={"ready": False, "serving": True, "terminating": True}),
        ep(4, conditions={"ready": False, "serving": False, "terminating": True}),
    ]
    (served,) = resolve(
        snapshot(lb(), listener("web"), service("a", {"app": "web"}, endpoints))
    ).listeners
    assert [(str(b.address), b.weight) for b in served.backends] == [
        ("198.18.1.1", 1),
        ("198.18.1.3", 0),
    ]


def test_the_older_listener_keeps_a_contested_port() -> None:
    state = resolve(
        snapshot(
            lb(),
            listener("newer", created_at=200.0),
            listener("older", created_at=100.0),
            listener("other-transport", protocol="UDP", health_check=None, created_at=300.0),
            listener("grpc-same-port", protocol="GRPC", created_at=400.0),
        )
    )
    assert [r.listener.name for r in state.listeners] == ["older", "other-transport"]
    reasons = {r.listener: r.reason for r in state.rejected}
    assert set(reasons) == {"newer", "grpc-same-port"}
    assert "already taken (by its instance's owner, or an earlier claim)" in reasons["newer"]
    assert "'older'" not in reasons["newer"]  # another tenant's listener is not named
    assert "198.18.0.10:80/TCP" in reasons["grpc-same-port"]


def test_listeners_wait_for_a_vip_and_need_their_load_balancer() -> None:
    state = resolve(snapshot(lb(vip=None), listener("web"), listener("lost", load_balancer="gone")))
    assert state.listeners == ()
    by_name = {r.listener: r for r in state.rejected}
    assert by_name["web"].pending
    assert "waits for a VIP" in by_name["web"].reason
    assert not by_name["lost"].pending
    assert "'gone' does not exist" in by_name["lost"].reason


def test_a_services_own_listener_forwards_to_that_service_only() -> None:
    own = listener("shop-a-http", selector=None, owner={"kind": "Service", "name": "shop/a"})
    state = resolve(
        snapshot(
            lb(), own,
            service("a", {"app": "web"}, [ep(1)]),
            service("b", {"app": "web"}, [ep(2)]),
        )
    )  # fmt: skip
    (served,) = state.listeners
    assert served.services == ("shop/a",)
    assert [str(b.address) for b in served.backends] == ["198.18.1.1"]


def test_target_port_by_number_and_missing_ports() -> None:
    by_number = listener("web", target_port=80)
    missing = listener("other", port=81, target_port="metrics")
    state = resolve(snapshot(lb(), by_number, missing, service("a", {"app": "web"}, [ep(1)])))
    backends = {r.listener.name: len(r.backends) for r in state.listeners}
    assert backends == {"web": 1, "other": 0}


def test_node_groups_partition_listeners() -> None:
    state = resolve(
        snapshot(
            lb(), lb("edge", vip="198.18.0.20", node_group="edge"),
            listener("web"), listener("edge-web", load_balancer="edge"),
        )
    )  # fmt: skip
    assert [r.listener.name for r in state.for_node_group("edge")] == ["edge-web"]
    assert [r.listener.name for r in state.for_node_group("default")] == ["web"]


def test_routes_resolve_their_own_services_and_ports() -> None:
    def to(app: str) -> list[dict[str, object]]:
        return [{"selector": {"match_labels": {"app": app}}}]

    routes = [
        {"name": "api", "path_prefix": "/api", "forward_to": to("api")},
        {"name": "admin", "hosts": ["admin.example"], "forward_to": [{"target_port": "admin"}]},
        {"name": "nothing", "path_prefix": "/x", "forward_to": to("none")},
        {"name": "canary", "path_prefix": "/c", "forward_to": [*to("api"), {"weight": 3}]},
        {"name": "moved", "path_prefix": "/old", "redirect": {"path": "/new"}},
    ]
    admin_service = service("a", {"app": "web"}, [ep(1)])
    admin_service[1]["ports"].append({"name": "admin", "port": 81, "target_port": 9090})
    admin_service[1]["backends"]["admin"] = [{"address": "198.18.1.1", "port": 9090}]
    state = resolve(
        snapshot(
            lb(),
            listener("web", protocol="HTTP", routes=routes),
            admin_service,
            service("api", {"app": "api"}, [ep(5), ep(6)]),
        )
    )
    (served,) = state.listeners
    assert served.services == ("shop/a",)
    api, admin, nothing, canary, moved = served.routes
    assert api.route.name == "api"
    assert api.services == ("shop/api",)
    assert [str(b.address) for t in api.targets for b in t.backends] == ["198.18.1.5", "198.18.1.6"]
    assert admin.services == ("shop/a",)
    assert [(str(b.address), b.port) for b in admin.targets[0].backends] == [("198.18.1.1", 9090)]
    assert nothing.services == ()
    assert nothing.targets[0].backends == ()
    # A weighted split: each target on its own, with its weight; the default is the listener's.
    assert [(t.services, t.weight) for t in canary.targets] == [
        (("shop/api",), 1),
        (("shop/a",), 3),
    ]
    assert canary.services == ("shop/api", "shop/a")
    assert (moved.targets, moved.services) == ((), ())


def test_a_listener_without_routes_resolves_none() -> None:
    state = resolve(snapshot(lb(), listener("web"), service("a", {"app": "web"}, [ep(1)])))
    assert state.listeners[0].routes == ()


def test_a_gateways_listener_forwards_by_its_rules_alone() -> None:
    gateway = {"kind": "Gateway", "name": "shop/edge"}
    rules = [{"name": "web", "path_segments": "/web",
              "forward_to": [{"service": "shop/a", "target_port": 80}]},
             {"name": "no-route-matched", "fixed_response": {"status": 404}}]  # fmt: skip
    state = resolve(
        snapshot(
            lb("edge", owner=gateway, namespace="shop", allowed_namespaces=[]),
            listener("gw", load_balancer="edge", protocol="HTTP", selector=None,
                     target_port=80, owner=gateway, routes=rules),
            service("a", {}, [ep(1)]),
            service("b", {"app": "web"}, [ep(2)]),
        )
    )  # fmt: skip
    (served,) = state.listeners
    assert served.services == ()  # none of its own: no selector picks b
    web, not_found = served.routes
    assert [b.address.compressed for t in web.targets for b in t.backends] == ["198.18.1.1"]
    assert not_found.targets == ()


def test_a_gateways_listener_takes_no_selector_and_names_every_target() -> None:
    gateway = {"kind": "Gateway", "name": "shop/edge"}
    with pytest.raises(ValidationError, match="selector"):
        KINDS["Listener"].model_validate(listener("gw", owner=gateway, protocol="HTTP")[1])
    rules = [{"name": "r", "forward_to": [{"target_port": 80}]}]
    with pytest.raises(ValidationError, match=r"routes\.0\.forward_to\.0\.service"):
        KINDS["Listener"].model_validate(
            listener("gw", owner=gateway, protocol="HTTP", selector=None, routes=rules)[1]
        )


def test_a_gateways_tcp_listener_weighs_each_targets_endpoints_by_its_share() -> None:
    """IPVS's weighted scheduler splits a rule's connections as its weights ask: a target's
    share is spread over its serving endpoints; draining ones keep weight 0."""
    gateway = {"kind": "Gateway", "name": "shop/edge"}
    rule = {"name": "db", "forward_to": [{"service": "shop/a", "target_port": 80, "weight": 1},
                                         {"service": "shop/b", "target_port": 80, "weight": 3},
                                         {"service": "shop/gone", "target_port": 80}]}  # fmt: skip
    draining = {"conditions": {"ready": False, "serving": True, "terminating": True}}
    state = resolve(
        snapshot(
            lb("edge", owner=gateway, namespace="shop", allowed_namespaces=[]),
            listener("gw", load_balancer="edge", protocol="TCP", selector=None, target_port=80,
                     owner=gateway, routes=[rule], scheduler="wrr"),
            service("a", {}, [ep(1), ep(2), ep(9, **draining)]),
            service("b", {}, [ep(3)]),
            service("c", {}, []),
        )
    )  # fmt: skip
    (served,) = state.listeners
    assert served.services == ("shop/a", "shop/b")
    assert [(b.address.compressed, b.weight) for b in served.backends] == [
        ("198.18.1.1", 1250), ("198.18.1.2", 1250), ("198.18.1.3", 7500), ("198.18.1.9", 0),
    ]  # fmt: skip


def test_an_l4_listener_routes_only_as_a_gateways_one_forwarding_rule() -> None:
    gateway = {"kind": "Gateway", "name": "shop/edge"}
    forward = {"name": "r", "forward_to": [{"service": "shop/a", "target_port": 80}]}

    def tcp(owner: dict[str, str], *rules: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"selector": None} if owner is gateway else {}
        return listener("gw", owner=owner, routes=list(rules), **fields)[1]

    KINDS["Listener"].model_validate(tcp(gateway, forward))
    refusals = {
        "routes: only HTTP, HTTPS, GRPC and TLS listeners route": tcp(
            OPERATOR, {**forward, "forward_to": [{"target_port": 80}]}
        ),
        "a TCP or UDP listener forwards by one rule": tcp(gateway, forward, {**forward,
                                                                             "name": "s"}),
        r"routes\.0\.path_prefix": tcp(gateway, {**forward, "path_prefix": "/x"}),
        "routes.0.forward_to: a TCP or UDP rule forwards": tcp(gateway, {"name": "r"}),
    }  # fmt: skip
    for field, data in refusals.items():
        with pytest.raises(ValidationError, match=field):
            KINDS["Listener"].model_validate(data)
