"""The REST API through the Flask test client, against real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from devbed.pki import chain
from devbed.pki import key_pem as other_key_pem
from slb.model import Certificate, Listener, LoadBalancer, Owner, OwnerKind, Service
from slb.operations import Operations
from slb.storage.secrets import SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from slb.storage.timeseries import CONNECTIONS, REQUESTS_PER_SECOND, TimeSeries

Headers = Callable[..., dict[str, str]]
LISTENER = {
    "name": "web",
    "load_balancer": "public",
    "protocol": "HTTP",
    "port": 80,
    "selector": "app=shop",
    "target_port": "http",
}


def service(name: str, labels: dict[str, str], ready: int, not_ready: int = 0) -> Service:
    backends = [
        {"address": f"198.18.10.{i + 1}", "port": 8080, "conditions": {"ready": i < ready}}
        for i in range(ready + not_ready)
    ]
    return Service.model_validate(
        {
            "namespace": "shop",
            "name": name,
            "labels": labels,
            "load_balancer": "public",
            "ports": [{"name": "http", "port": 80}],
            "backends": {"http": backends},
        }
    )


def fields(response: Any) -> list[str]:
    return [e["field"] for e in response.get_json()["errors"]]


def test_login_is_required_everywhere(client: FlaskClient, token: Headers) -> None:
    assert client.get("/api/v1/listeners").status_code == 401
    assert client.get("/api/v1/openapi.json").status_code == 401
    assert client.get("/metrics").status_code == 401
    bad = client.get("/api/v1/listeners", headers={"Authorization": "Bearer slb_nope"})
    assert bad.status_code == 401
    assert bad.get_json()["errors"][0]["message"]
    assert bad.headers["WWW-Authenticate"].startswith("Bearer")
    page = client.get("/listeners")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=/listeners")
    assert client.get("/api/v1/me", headers=token("victor")).get_json()["role"] == "viewer"


def test_roles(client: FlaskClient, token: Headers, ops: Operations) -> None:
    viewer, operator = token("victor"), token("alice")
    assert client.get("/api/v1/listeners", headers=viewer).status_code == 200
    refused = client.post("/api/v1/listeners", headers=viewer, json=LISTENER)
    assert refused.status_code == 403
    assert "operator" in refused.get_json()["errors"][0]["message"]
    assert client.post("/api/v1/listeners", headers=operator, json=LISTENER).status_code == 201
    group = {"nodes": [{"name": "lb1", "address": "198.18.1.1"}]}
    assert (
        client.put("/api/v1/node-groups/default", headers=operator, json=group).status_code == 403
    )
    assert (
        client.put("/api/v1/node-groups/default", headers=token("admin"), json=group).status_code
        == 200
    )
    assert client.get("/api/v1/users", headers=operator).status_code == 403


def test_listener_lifecycle_with_versions(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    h = token("alice")
    created = client.post("/api/v1/listeners", headers=h, json=LISTENER)
    assert created.status_code == 201
    body = created.get_json()
    assert body["selector"] == {"match_labels": {"app": "shop"}, "match_expressions": []}
    assert body["owner"]["kind"] == "Operator"
    assert created.headers["Location"] == "/api/v1/listeners/web"
    v1 = body["version"]
    assert created.headers["ETag"] == f'"{v1}"'

    no_version = client.patch("/api/v1/listeners/web", headers=h, json={"scheduler": "lc"})
    assert no_version.status_code == 428
    changed = client.patch(
        "/api/v1/listeners/web", headers=h, json={"scheduler": "lc", "version": v1}
    )
    assert changed.status_code == 200
    v2 = changed.get_json()["version"]
    assert v2 > v1
    assert changed.get_json()["scheduler"] == "lc"

    # Someone who read v1 does not overwrite v2.
    before = store.revision()
    stale = client.patch(
        "/api/v1/listeners/web", headers=h, json={"scheduler": "wrr", "version": v1}
    )
    assert stale.status_code == 409
    assert fields(stale) == ["version"]
    assert store.revision() == before
    assert client.get("/api/v1/listeners/web", headers=h).get_json()["scheduler"] == "lc"
    via_header = client.patch(
        "/api/v1/listeners/web", headers={**h, "If-Match": f'"{v2}"'}, json={"port": 81}
    )
    assert via_header.status_code == 200
    v3 = via_header.get_json()["version"]

    assert client.delete(f"/api/v1/listeners/web?version={v1}", headers=h).status_code == 409
    assert client.delete("/api/v1/listeners/web", headers=h).status_code == 428
    assert client.delete(f"/api/v1/listeners/web?version={v3}", headers=h).status_code == 204
    assert client.get("/api/v1/listeners/web", headers=h).status_code == 404

    trail = client.get("/api/v1/audit?kind=Listener&key=web", headers=h).get_json()["items"]
    assert [e["action"] for e in trail] == ["delete", "update", "update", "create"]
    assert trail[0]["who"].startswith("alice (token ")
    assert trail[2]["before"]["scheduler"] == "rr"
    assert trail[2]["after"]["scheduler"] == "lc"


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        ({"port": 70000}, 422, ["port"]),
        ({"port": "eighty"}, 422, ["port"]),
        ({"name": "web2", "protocol": "TCP"}, 422, ["port"]),  # 198.18.0.10:80/TCP is taken
        ({"name": "web3", "selector": "app in (shop"}, 422, ["selector"]),
        (
            {"name": "web4", "selector": {"match_labels": {"-bad": "x"}}},
            422,
            ["selector.match_labels"],
        ),
        ({"name": "Not_A_Name"}, 422, ["name"]),
        ({"name": "web5", "load_balancer": "nosuch"}, 422, ["load_balancer"]),
        ({"name": "web6", "protocol": "HTTPS"}, 422, ["certificates"]),
        ({"name": "web7", "owner": {"kind": "Service", "name": "x"}}, 422, ["owner"]),
        ({"name": "web8", "colour": "blue"}, 422, ["colour"]),
        (
            {"name": "web9", "port": 0, "health_check": {"interval_s": 99}},
            422,
            ["port", "health_check.interval_s"],
        ),
    ],
    ids=[
        "port-range",
        "port-type",
        "vip-port-conflict",
        "selector-syntax",
        "label-key",
        "name",
        "no-instance",
        "https-needs-cert",
        "owner-is-server-set",
        "unknown-field",
        "every-field",
    ],
)
def test_bad_listeners_are_refused_naming_each_field_and_save_nothing(
    client: FlaskClient,
    token: Headers,
    ops: Operations,
    store: Store,
    change: dict[str, Any],
    status: int,
    named: list[str],
) -> None:
    h = token("alice")
    assert client.post("/api/v1/listeners", headers=h, json=LISTENER).status_code == 201
    before = store.revision()
    response = client.post("/api/v1/listeners", headers=h, json={**LISTENER, **change})
    assert response.status_code == status
    assert sorted(fields(response)) == sorted(named)
    assert all(e["message"] for e in response.get_json()["errors"])
    assert store.revision() == before
    assert sorted(store.all(Listener)) == ["web"]


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2]", b'"text"', b""], ids=["broken", "array", "string", "empty"]
)
def test_malformed_json_is_a_400(client: FlaskClient, token: Headers, body: bytes) -> None:
    response = client.post(
        "/api/v1/listeners",
        headers={**token("alice"), "Content-Type": "application/json"},
        data=body,
    )
    assert response.status_code == 400
    assert "malformed JSON" in response.get_json()["errors"][0]["message"]


def test_rules_are_put_moved_and_removed_with_versions(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    h = token("alice")
    version = client.post("/api/v1/listeners", headers=h, json=LISTENER).get_json()["version"]
    url = "/api/v1/listeners/web/rules"
    api = {"path_prefix": "/api/", "forward_to": [{"selector": {"match_labels": {"app": "api"}}}]}
    no_version = client.put(f"{url}/api", headers=h, json=api)
    assert no_version.status_code == 428
    put = client.put(f"{url}/api", headers=h, json={**api, "version": version})
    assert put.status_code == 200, put.get_json()
    version = put.get_json()["version"]
    first = {"redirect": {"scheme": "https"}, "position": 0, "version": version}
    put = client.put(f"{url}/to-https", headers=h, json=first)
    assert [r["name"] for r in put.get_json()["routes"]] == ["to-https", "api"]
    version = put.get_json()["version"]

    bad = client.put(f"{url}/bad", headers=h,
                     json={"path_regex": "(a)\\1", "headers": [{"name": ":path"}],
                           "version": version})  # fmt: skip
    assert bad.status_code == 422
    assert fields(bad) == ["routes.2.path_regex", "routes.2.headers.0.name"]
    renamed = client.put(f"{url}/api", headers=h, json={"name": "other", "version": version})
    assert fields(renamed) == ["routes.name"]
    stale = client.put(f"{url}/x", headers=h, json={"version": version - 1})
    assert (stale.status_code, fields(stale)) == (409, ["version"])

    moved = client.put(f"{url}/api/position", headers=h, json={"position": 0, "version": version})
    assert [r["name"] for r in moved.get_json()["routes"]] == ["api", "to-https"]
    version = moved.get_json()["version"]
    far = client.put(f"{url}/api/position", headers=h, json={"position": 9, "version": version})
    assert (far.status_code, fields(far)) == (422, ["routes"])
    gone = client.delete(f"{url}/to-https?version={version}", headers=h)
    assert [r["name"] for r in gone.get_json()["routes"]] == ["api"]
    missing = client.delete(f"{url}/to-https?version={gone.get_json()['version']}", headers=h)
    assert missing.status_code == 422
    trail = client.get("/api/v1/audit?kind=Listener&key=web", headers=h).get_json()["items"]
    assert [e["action"] for e in trail] == ["update"] * 4 + ["create"]


def test_service_owned_listeners_are_shown_and_read_only(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    store.put(service("cart", {"app": "shop"}, ready=2))
    owned = Listener.model_validate(
        {
            **LISTENER,
            "name": "shop-cart-http",
            "selector": None,
            "port": 8080,
            "owner": {"kind": "Service", "name": "shop/cart"},
        }
    )
    version = store.put(owned)
    h = token("alice")
    listed = client.get("/api/v1/listeners?owner=Service", headers=h).get_json()
    assert [i["name"] for i in listed["items"]] == ["shop-cart-http"]
    refused = client.patch(
        "/api/v1/listeners/shop-cart-http", headers=h, json={"port": 8081, "version": version}
    )
    assert refused.status_code == 422
    assert "belongs to Service shop/cart" in refused.get_json()["errors"][0]["message"]
    backends = client.get("/api/v1/listeners/shop-cart-http/backends", headers=h).get_json()
    assert [(b["address"], b["health"]) for b in backends["items"]] == [
        ("198.18.10.1", "ready"),
        ("198.18.10.2", "ready"),
    ]


def test_instances_pools_and_deletes_are_guarded(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    h = token("alice")
    made = client.post(
        "/api/v1/load-balancers",
        headers=h,
        json={"name": "edge", "vip": "198.18.0.20", "node_group": "default"},
    )
    assert made.status_code == 201
    again = client.post(
        "/api/v1/load-balancers", headers=h, json={"name": "edge", "vip": "198.18.0.21"}
    )
    assert again.status_code == 409
    assert (
        client.post(
            "/api/v1/listeners", headers=h, json={**LISTENER, "load_balancer": "edge"}
        ).status_code
        == 201
    )
    store.put(
        service("cart", {"app": "shop"}, ready=1).model_copy(update={"load_balancer": "edge"})
    )
    edge = client.get("/api/v1/load-balancers/edge", headers=h).get_json()
    assert edge["listeners"] == ["web"]
    assert edge["services"] == ["shop/cart"]
    refused = client.delete(f"/api/v1/load-balancers/edge?version={edge['version']}", headers=h)
    assert refused.status_code == 422
    assert "still has listeners: web" in refused.get_json()["errors"][0]["message"]
    no_vip = client.post("/api/v1/load-balancers", headers=h, json={"name": "x"})
    assert fields(no_vip) == ["vip"]

    operator_pool = client.put("/api/v1/pools/mine", headers=h, json={"cidrs": ["0.0.0.0/0"]})
    assert operator_pool.status_code == 403  # the address space is the admins'
    h = token("admin")
    pool = client.put("/api/v1/pools/extra", headers=h, json={"cidrs": ["198.18.4.0/24"]})
    assert pool.status_code == 200
    assert (
        client.put("/api/v1/pools/extra", headers=h, json={"cidrs": ["198.18.5.0/24"]}).status_code
        == 409
    )
    replaced = client.put(
        "/api/v1/pools/extra",
        headers=h,
        json={"cidrs": ["198.18.5.0/24"], "version": pool.get_json()["version"]},
    )
    assert replaced.get_json()["cidrs"] == ["198.18.5.0/24"]
    bad = client.put("/api/v1/pools/bad", headers=h, json={"cidrs": ["198.18.5.1/24"]})
    assert fields(bad) == ["cidrs"]
    names = [p["name"] for p in client.get("/api/v1/pools", headers=h).get_json()["items"]]
    assert names == ["default", "extra"]


def test_certificates_are_checked_and_the_key_never_returned(
    client: FlaskClient, token: Headers, store: Store
) -> None:
    h = token("alice")
    pair = chain("shop.example.test", "www.example.test", days=90)
    created = client.post(
        "/api/v1/certificates",
        headers=h,
        json={"name": "shop", "chain_pem": pair.chain_pem, "key_pem": pair.key_pem},
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["subject"] == "CN=shop.example.test"
    assert body["sans"] == ["shop.example.test", "www.example.test"]
    assert 88 <= body["days_left"] <= 90
    assert body["expires_soon"] is False
    for response in (
        created,
        client.get("/api/v1/certificates", headers=h),
        client.get("/api/v1/certificates/shop", headers=h),
        client.get("/api/v1/audit", headers=h),
    ):
        assert "PRIVATE KEY" not in response.get_data(as_text=True)
        assert "key_pem" not in response.get_data(as_text=True)

    soon = chain(days=10)
    warned = client.post(
        "/api/v1/certificates",
        headers=h,
        json={"name": "soon", "chain_pem": soon.chain_pem, "key_pem": soon.key_pem},
    )
    assert warned.get_json()["expires_soon"] is True

    before = store.revision()
    expired = chain(days=-2)
    for name, chain_pem, key_pem, field in [
        ("wrongkey", pair.chain_pem, other_key_pem(), "key_pem"),
        ("expired", expired.chain_pem, expired.key_pem, "chain_pem"),
        ("order", pair.intermediate_pem + pair.leaf_pem, pair.key_pem, "chain_pem"),
        ("Bad_Name", pair.chain_pem, pair.key_pem, "name"),
        ("nokey", pair.chain_pem, "", "key_pem"),
    ]:
        refused = client.post(
            "/api/v1/certificates",
            headers=h,
            json={"name": name, "chain_pem": chain_pem, "key_pem": key_pem},
        )
        assert refused.status_code == 422, name
        assert field in fields(refused), name
        assert "PRIVATE KEY" not in refused.get_data(as_text=True)
    assert store.revision() == before

    version = body["version"]
    rotated = chain("shop.example.test")
    assert (
        client.put(
            "/api/v1/certificates/shop",
            headers=h,
            json={"chain_pem": rotated.chain_pem, "key_pem": rotated.key_pem},
        ).status_code
        == 428
    )
    new = client.put(
        "/api/v1/certificates/shop",
        headers=h,
        json={"chain_pem": rotated.chain_pem, "key_pem": rotated.key_pem, "version": version},
    )
    assert new.status_code == 200
    assert new.get_json()["key_ref"] != body["key_ref"]


def test_a_certificate_made_from_a_services_secret_is_read_only_in_the_console(
    client: FlaskClient, token: Headers, store: Store
) -> None:
    """cmi renews it from its Secret: an upload over it or a delete would be undone, so the
    API refuses both by name, and the page shows where it comes from and no Delete."""
    pair = chain("shop.example.test")
    SecretStore(store).put_key("k8s-site", pair.key_pem)
    owner = Owner(kind=OwnerKind.SERVICE, name="shop/web")
    store.put(Certificate(name="shop-web-tls-site", chain_pem=pair.chain_pem,
                          key_ref="k8s-site", namespace="shop", owner=owner))  # fmt: skip
    h = token("alice")
    before = store.revision()
    rotated = chain("shop.example.test")
    version = client.get("/api/v1/certificates/shop-web-tls-site", headers=h).get_json()["version"]
    for response in (
        client.put("/api/v1/certificates/shop-web-tls-site", headers=h,
                   json={"chain_pem": rotated.chain_pem, "key_pem": rotated.key_pem,
                         "version": version}),
        client.delete("/api/v1/certificates/shop-web-tls-site",
                      headers={**h, "If-Match": str(version)}),
    ):  # fmt: skip
        assert response.status_code == 422, response.get_data(as_text=True)
        assert "belongs to Service shop/web: change the Service instead" in response.get_data(
            as_text=True
        )
    assert store.revision() == before
    assert SecretStore(store).get_key("k8s-site") is not None
    listed = client.get("/api/v1/certificates", headers=h).get_json()["items"]
    assert [c["owner"] for c in listed] == [{"kind": "Service", "name": "shop/web"}]


def test_selector_preview(client: FlaskClient, token: Headers, store: Store) -> None:
    store.put(service("cart", {"app": "shop", "tier": "api"}, ready=3, not_ready=1))
    store.put(service("ui", {"app": "shop", "tier": "web"}, ready=2))
    store.put(service("db", {"app": "billing"}, ready=1))
    h = token("victor")
    found = client.get("/api/v1/selector-preview?selector=app%3Dshop&target_port=http", headers=h)
    body = found.get_json()
    assert [(s["key"], s["ready_endpoints"], s["endpoints"]) for s in body["services"]] == [
        ("shop/cart", 3, 4),
        ("shop/ui", 2, 2),
    ]
    assert body["ready_endpoints"] == 5
    narrowed = client.get("/api/v1/selector-preview?selector=app=shop,tier notin (web)", headers=h)
    assert [s["key"] for s in narrowed.get_json()["services"]] == ["shop/cart"]
    broken = client.get("/api/v1/selector-preview?selector=app in (", headers=h).get_json()
    assert broken["services"] == []
    assert "unbalanced" in broken["error"]
    assert client.get("/api/v1/services?selector=app in (", headers=h).status_code == 422
    assert client.get("/api/v1/services?selector=tier", headers=h).get_json()["total"] == 2


def test_status_follows_what_the_nodes_report(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    h = token("alice")
    version = client.post("/api/v1/listeners", headers=h, json=LISTENER).get_json()["version"]

    def state() -> dict[str, Any]:
        status: dict[str, Any] = client.get("/api/v1/listeners/web", headers=h).get_json()["status"]
        return status

    assert state()["state"] == "pending"
    assert "no Envoy of group 'default' is connected" in state()["reason"]
    board = StatusBoard(store)
    board.report("l4", "lb1", "default", version)
    board.report("l7", "envoy-lb1", "default", version - 1)
    assert state()["state"] == "pending"
    assert "Envoy envoy-lb1 serves revision" in state()["reason"]
    board.report(
        "l7",
        "envoy-lb1",
        "default",
        version - 1,
        error="NACK: cluster web: invalid health check",
        error_revision=version,
    )
    failed = state()
    assert failed["state"] == "error"
    assert "NACK: cluster web" in failed["reason"]
    board.report("l7", "envoy-lb1", "default", version)
    served = state()
    assert served["state"] == "served"
    assert [(n["node"], n["state"]) for n in served["nodes"]] == [
        ("lb1", "served"),
        ("envoy-lb1", "served"),
    ]
    summary = client.get("/api/v1/status", headers=h).get_json()
    assert summary["listeners"] == {"served": 1, "pending": 0, "error": 0}
    assert {n["node"] for n in summary["nodes"]} == {"lb1", "envoy-lb1"}
    assert client.get("/api/v1/listeners?state=served", headers=h).get_json()["total"] == 1

    # A listener that loses its port to an older one is in error, with cmi's reason.
    ops.add_load_balancer({"name": "twin", "vip": "198.18.0.10"})
    store.put(
        Listener.model_validate(
            {
                **LISTENER,
                "name": "older",
                "load_balancer": "twin",
                "created_at": 1.0,
                "selector": {"match_labels": {"app": "x"}},
                "owner": {"kind": "Operator", "name": "bob"},
            }
        )
    )
    lost = state()
    assert lost["state"] == "error"
    assert "already taken (by its instance's owner, or an earlier claim)" in lost["reason"]


def test_traffic_charts_read_the_time_series(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    import time

    h = token("alice")
    client.post("/api/v1/listeners", headers=h, json=LISTENER)
    ts = TimeSeries(store)
    now = time.time()
    for node in ("lb1", "lb2"):
        for i in range(6):
            labels = {"tier": "l7", "listener": "web", "node": node}
            ts.append(CONNECTIONS, labels, 10 + i, t=now - 60 + 10 * i)
            ts.append(REQUESTS_PER_SECOND, labels, 100, t=now - 60 + 10 * i)
    metrics = client.get("/api/v1/listeners/web/metrics?window=120&step=10", headers=h).get_json()
    connections = metrics["series"]["connections"]
    assert len(connections) == 6
    assert connections[-1]["value"] == 30  # 15 on each of two nodes
    assert {p["value"] for p in metrics["series"]["requests_per_second"]} == {200}
    assert metrics["series"]["bytes_per_second"] == []
    assert client.get("/api/v1/listeners/web/metrics?window=5", headers=h).status_code == 422


def test_prometheus_metrics(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    h = token("victor")
    client.get("/api/v1/listeners", headers=h)
    StatusBoard(store).report("l4", "lb1", "default", 1, error="netlink: EINVAL", error_revision=2)
    text = client.get("/metrics", headers=h).get_data(as_text=True)
    assert f"openslb_desired_revision {float(store.revision())}" in text
    assert 'openslb_desired_objects{kind="LoadBalancer"} 1.0' in text
    assert 'openslb_node_error{group="default",node="lb1",tier="l4"} 1.0' in text
    assert (
        'openslb_console_requests_total{endpoint="api_listeners.list_listeners",'
        'method="GET",status="200"}' in text
    )


def test_pagination_and_filters(client: FlaskClient, token: Headers, ops: Operations) -> None:
    h = token("alice")
    for i in range(12):
        body = {**LISTENER, "name": f"l{i:02}", "port": 1000 + i}
        assert client.post("/api/v1/listeners", headers=h, json=body).status_code == 201
    page = client.get("/api/v1/listeners?limit=5&offset=10", headers=h).get_json()
    assert page["total"] == 12
    assert [i["name"] for i in page["items"]] == ["l10", "l11"]
    assert client.get("/api/v1/listeners?q=l0&limit=100", headers=h).get_json()["total"] == 10
    assert client.get("/api/v1/listeners?limit=0", headers=h).status_code == 422
    assert client.get("/api/v1/listeners?limit=abc", headers=h).status_code == 422


def test_a_certificate_says_which_namespaces_may_use_it(
    client: FlaskClient, token: Headers
) -> None:
    pair = chain("shop.example.test", days=90)
    chain_pem, key = pair.chain_pem, pair.key_pem
    made = client.post("/api/v1/certificates", headers=token("alice"), json={
        "name": "shop-tls", "chain_pem": chain_pem, "key_pem": key,
        "namespace": "shop", "allowed_namespaces": ["web"],
    })  # fmt: skip
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert (body["namespace"], body["allowed_namespaces"]) == ("shop", ["web"])
    bad = client.post("/api/v1/certificates", headers=token("alice"), json={
        "name": "bad-tls", "chain_pem": chain_pem, "key_pem": key,
        "allowed_namespaces": ["No_Such"],
    })  # fmt: skip
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["field"].startswith("allowed_namespaces")


def test_instances_and_certificates_admit_namespaces_by_a_label_selector(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    """`allowed_namespace_selector` (#14), in `kubectl -l` form or structured; a bad one is
    a 422 naming the field."""
    alice = token("alice")
    made = client.post("/api/v1/load-balancers", headers=alice, json={
        "name": "teams", "pool": "default", "allowed_namespace_selector": "team=retail",
    })  # fmt: skip
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["allowed_namespace_selector"] == {
        "match_labels": {"team": "retail"}, "match_expressions": [],
    }  # fmt: skip
    teams = store.get(LoadBalancer, "teams")
    assert teams is not None
    assert teams.obj.admits("shop", {"team": "retail"})
    assert not teams.obj.admits("shop", {"team": "media"})
    structured = client.post("/api/v1/load-balancers", headers=alice, json={
        "name": "teams2", "pool": "default",
        "allowed_namespace_selector": {"match_expressions": [
            {"key": "team", "operator": "In", "values": ["retail"]}]},
    })  # fmt: skip
    assert structured.status_code == 201, structured.get_json()
    for bad in ("team in (retail", "", {}, {"match_labels": {"team": "a b"}}):
        refused = client.post("/api/v1/load-balancers", headers=alice, json={
            "name": "bad", "pool": "default", "allowed_namespace_selector": bad,
        })  # fmt: skip
        assert refused.status_code == 422, bad
        assert all(f.startswith("allowed_namespace_selector") for f in fields(refused)), bad
    pair = chain("shop.example.test", days=90)
    cert = client.post("/api/v1/certificates", headers=alice, json={
        "name": "teams-tls", "chain_pem": pair.chain_pem, "key_pem": pair.key_pem,
        "namespace": "ops", "allowed_namespace_selector": "team=retail",
    })  # fmt: skip
    assert cert.status_code == 201, cert.get_json()
    assert cert.get_json()["allowed_namespace_selector"]["match_labels"] == {"team": "retail"}
    stored = store.get(Certificate, "teams-tls")
    assert stored is not None
    assert stored.obj.admits("shop", {"team": "retail"})
    assert not stored.obj.admits("shop", {"team": "media"})
    rotated = client.put("/api/v1/certificates/teams-tls", headers=alice, json={
        "chain_pem": pair.chain_pem, "key_pem": pair.key_pem, "version": stored.revision,
    })  # fmt: skip
    assert rotated.status_code == 200, rotated.get_json()
    assert rotated.get_json()["allowed_namespace_selector"]["match_labels"] == {"team": "retail"}
    bad_cert = client.post("/api/v1/certificates", headers=alice, json={
        "name": "bad-tls", "chain_pem": pair.chain_pem, "key_pem": pair.key_pem,
        "allowed_namespace_selector": "team in (retail",
    })  # fmt: skip
    assert bad_cert.status_code == 422
    assert fields(bad_cert) == ["allowed_namespace_selector"]


def test_an_operator_making_instances_for_a_namespace_is_held_to_its_quota(
    client: FlaskClient, token: Headers, ops: Operations, store: Store
) -> None:
    """One quota of VIPs per namespace (`cmi.instances_per_namespace`, #14): the instances
    its Services own and those operators make for it count alike; one more is a 422 naming
    `namespace`. The cluster's own instances and other tenants' are not held back."""
    client.application.config["INSTANCES_PER_NAMESPACE"] = 2
    alice = token("alice")
    store.put(LoadBalancer(name="shop-cart", pool="default", namespace="shop",
                           owner=Owner(kind=OwnerKind.SERVICE, name="shop/cart")))  # fmt: skip

    def make(name: str, namespace: str | None) -> Any:
        body = {"name": name, "pool": "default", "namespace": namespace}
        return client.post("/api/v1/load-balancers", headers=alice, json=body)

    assert make("shop-a", "shop").status_code == 201
    refused = make("shop-b", "shop")
    assert refused.status_code == 422
    assert fields(refused) == ["namespace"]
    assert "cmi.instances_per_namespace" in refused.get_json()["errors"][0]["message"]
    assert store.get(LoadBalancer, "shop-b") is None
    assert make("web-a", "web").status_code == 201
    assert make("shared", None).status_code == 201


def test_an_operator_cannot_claim_the_gateway_or_any_address_as_a_vip(
    client: FlaskClient, token: Headers, store: Store
) -> None:
    """A fixed VIP must be one the admins' pools offer: not the gateway they reserved, not an
    address outside every pool (the data planes serve a stored VIP as it is) (#14)."""
    admin, alice = token("admin"), token("alice")
    pool = {"cidrs": ["198.18.6.0/24"], "reserved": ["198.18.6.1"]}
    assert client.put("/api/v1/pools/edge", headers=admin, json=pool).status_code == 200
    for vip in ("198.18.6.1", "198.18.200.1", "198.18.6.0"):
        refused = client.post("/api/v1/load-balancers", headers=alice,
                              json={"name": "grab", "vip": vip})  # fmt: skip
        assert refused.status_code == 422, vip
        assert fields(refused) == ["vip"]
    assert store.get(LoadBalancer, "grab") is None
    fine = client.post(
        "/api/v1/load-balancers", headers=alice, json={"name": "ok", "vip": "198.18.6.9"}
    )
    assert fine.status_code == 201
    outside = client.put("/api/v1/pools/odd", headers=admin,
                         json={"cidrs": ["198.18.7.0/24"], "reserved": ["198.18.8.1"]})  # fmt: skip
    assert fields(outside) == ["reserved"]
