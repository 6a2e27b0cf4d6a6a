"""Pages, login, sessions, CSRF and the rate limit, through the Flask test client."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from devbed.pki import chain, self_signed
from devbed.redis import RedisServer
from slb.cli import main
from slb.model import (
    BackendProtocol,
    Certificate,
    Listener,
    LoadBalancer,
    Owner,
    OwnerKind,
    Service,
)
from slb.operations import Operations
from slb.storage.audit import AuditLog
from slb.storage.status import ControllerBeat, StatusBoard
from slb.storage.store import Store
from tests.web.conftest import PASSWORD, Auth, csrf_of, make_app
from web.rules import rule_to_form

FORM = {
    "name": "web", "load_balancer": "public", "protocol": "HTTP", "port": "80",
    "target_port": "http", "selector": "app=shop", "scheduler": "rr", "forwarding": "nat",
    "hc_type": "http", "hc_path": "/healthz", "hc_interval_s": "5", "hc_timeout_s": "3",
    "hc_healthy_threshold": "2", "hc_unhealthy_threshold": "4", "persistence_mode": "none",
    "idle_timeout_s": "600", "request_timeout_s": "30", "backend_protocol": "",
}  # fmt: skip


def test_login_sets_a_safe_session_cookie(client: FlaskClient, auth: Auth) -> None:
    response = auth.login("alice")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert "alice · operator" in client.get("/").get_data(as_text=True)


def test_security_headers(client: FlaskClient, auth: Auth) -> None:
    auth.login("alice")
    page = client.get("/listeners")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.get_data(as_text=True)
    assert "onsubmit" not in client.get("/certificates").get_data(as_text=True)


def test_session_cookie_is_secure_over_tls(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/login", base_url="https://console.test")
    response = client.post(
        "/login", base_url="https://console.test",
        data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(page)},
    )  # fmt: skip
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_wrong_password_and_rate_limit(client: FlaskClient, auth: Auth) -> None:
    for _ in range(5):
        failed = auth.login("alice", "wrong password!")
        assert failed.status_code == 401
        assert "Wrong user name or password" in failed.get_data(as_text=True)
    blocked = auth.login("alice", PASSWORD)  # from this address, even the right password
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many failed logins" in blocked.get_data(as_text=True)
    # The user is not locked out: the right password from another address works.
    other = Auth(client.application.test_client())
    other.client.environ_base["REMOTE_ADDR"] = "127.0.0.9"
    assert other.login("alice", PASSWORD).status_code == 302


def test_unknown_users_fail_like_wrong_passwords(auth: Auth) -> None:
    assert auth.login("nobody", PASSWORD).status_code == 401


def test_forms_need_the_csrf_token(client: FlaskClient, auth: Auth, ops: Operations) -> None:
    auth.login("alice")
    refused = client.post("/listeners/new", data=FORM)
    assert refused.status_code == 403
    assert "CSRF" in refused.get_data(as_text=True)
    wrong = client.post("/listeners/new", data={**FORM, "csrf_token": "forged"})
    assert wrong.status_code == 403
    # Cookie-authenticated API writes need it in a header as well.
    api = client.post("/api/v1/listeners", json={**FORM, "port": 80})
    assert api.status_code == 403
    assert auth.post("/listeners/new", FORM).status_code == 302
    login = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert login.status_code == 403


def test_create_a_listener_from_the_form(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    store.put(
        Service.model_validate(
            {"namespace": "shop", "name": "cart", "labels": {"app": "shop"},
             "load_balancer": "public", "ports": [{"name": "http", "port": 80}],
             "backends": {"http": [{"address": "198.18.10.1", "port": 8080}]}}
        )
    )  # fmt: skip
    auth.login("alice")
    preview = client.get("/listeners/preview?selector=app%3Dshop&target_port=http")
    text = preview.get_data(as_text=True)
    assert 'data-service="shop/cart"' in text
    assert "1/1 ready" in text
    created = auth.post("/listeners/new", {**FORM, "access_log": "on"})
    assert created.status_code == 302
    assert created.headers["Location"] == "/listeners/web"
    listener = store.get(Listener, "web")
    assert listener is not None
    assert listener.obj.access_log  # the ticked checkbox
    check = listener.obj.health_check
    assert check is not None
    assert (check.path, check.interval_s, check.unhealthy_threshold) == ("/healthz", 5, 4)
    assert listener.obj.request_timeout_s == 30
    assert listener.obj.owner.name == "alice"
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "every request, on the Envoy" in detail
    assert "198.18.10.1" in detail
    assert "app=shop" in detail
    assert "Listener web created" in detail
    listing = client.get("/listeners").get_data(as_text=True)
    assert 'data-listener="web"' in listing


@pytest.mark.parametrize(
    ("change", "field", "shown"),
    [
        ({"port": "70000"}, "port", "less than or equal to 65535"),
        ({"port": "abc"}, "port", "valid integer"),
        ({"selector": "app in ("}, "selector", "unbalanced"),
        ({"hc_interval_s": "0"}, "health_check.interval_s", "greater than or equal to 1"),
        ({"protocol": "UDP"}, "health_check", "cannot be health-checked"),
        ({"hc_path": "healthz"}, "health_check.path", "must start with"),
        (
            {"protocol": "TCP", "hc_type": "tcp", "hc_path": "", "request_timeout_s": ""},
            "idle_timeout_s",
            "applies only to HTTP, HTTPS and GRPC listeners",
        ),
    ],
    ids=["port-range", "port-type", "selector", "interval", "udp-health", "path", "l4-idle"],
)
def test_bad_form_input_is_shown_by_field_and_saves_nothing(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store,
    change: dict[str, str], field: str, shown: str,
) -> None:  # fmt: skip
    auth.login("alice")
    before = store.revision()
    page = auth.post("/listeners/new", {**FORM, **change})
    assert page.status_code == 422
    text = page.get_data(as_text=True)
    assert f'data-field="{field}"' in text
    assert shown in text
    assert "Nothing was saved" in text
    assert store.revision() == before


def test_port_conflict_on_the_form(client: FlaskClient, auth: Auth, ops: Operations) -> None:
    auth.login("alice")
    assert auth.post("/listeners/new", FORM).status_code == 302
    tcp = {
        "name": "web2",
        "protocol": "TCP",
        "hc_type": "tcp",
        "hc_path": "",
        "request_timeout_s": "",
        "idle_timeout_s": "",
    }
    page = auth.post("/listeners/new", {**FORM, **tcp})
    assert page.status_code == 422
    assert "198.18.0.10:80/TCP is taken by listener" in page.get_data(as_text=True)


def test_edit_with_a_stale_version_is_refused(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    auth.login("alice")
    auth.post("/listeners/new", FORM)
    form_page = client.get("/listeners/web/edit").get_data(as_text=True)
    assert 'value="/healthz"' in form_page
    version = store.get(Listener, "web").revision
    ops.update_listener("web", {"scheduler": "lc"})  # someone else, meanwhile
    stale = auth.post("/listeners/web/edit", {**FORM, "scheduler": "wrr", "version": str(version)})
    assert stale.status_code == 409
    assert "Someone else changed this listener" in stale.get_data(as_text=True)
    assert store.get(Listener, "web").obj.scheduler.value == "lc"
    fresh = store.get(Listener, "web").revision
    saved = auth.post("/listeners/web/edit", {**FORM, "scheduler": "wrr", "version": str(fresh)})
    assert saved.status_code == 302
    assert store.get(Listener, "web").obj.scheduler.value == "wrr"


def test_the_listener_page_shows_its_routes_and_the_form_keeps_them(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    auth.login("alice")
    auth.post("/listeners/new", FORM)
    assert 'id="routes"' not in client.get("/listeners/web").get_data(as_text=True)
    ops.update_listener("web", {"routes": [
        {"name": "api", "hosts": ["shop.example"], "path_prefix": "/api", "timeout_s": 5,
         "forward_to": [{"selector": {"match_labels": {"app": "api"}}, "target_port": 8080}]},
        {"name": "rest"},
    ]})  # fmt: skip
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "Forwarding rules <span" in detail
    assert "Read-only here" not in detail
    assert "slb listener rule add|rm|move|list web" in detail
    api = detail.split('data-route="api"')[1].split("</tr>")[0]
    for shown in ("shop.example", "path prefix <code>/api</code>", "app=api", "port 8080", "5 s"):
        assert shown in api
    rest = detail.split('data-route="rest"')[1].split("</tr>")[0]
    assert "100%</strong> to the listener's Services" in rest
    version = store.get(Listener, "web").revision
    saved = auth.post("/listeners/web/edit", {**FORM, "scheduler": "wrr", "version": str(version)})
    assert saved.status_code == 302
    assert [r.name for r in store.get(Listener, "web").obj.routes] == ["api", "rest"]


def test_the_listener_form_sets_networks_and_limits(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    """#17 item 2: one network per line (or separated by spaces or commas); a bad one is
    named with its place, and nothing is saved."""
    auth.login("alice")
    bad = auth.post("/listeners/new", {**FORM, "allowed_sources": "198.18.10.0/24\n198.18.11.1/24"})
    assert bad.status_code == 422
    page = bad.get_data(as_text=True)
    assert "allowed_sources: #2: &#39;198.18.11.1/24&#39; has host bits set" in page
    assert store.get(Listener, "web") is None
    made = auth.post("/listeners/new", {**FORM, "allowed_sources": "198.18.10.0/24, 2001:db8::/32",
                                        "denied_sources": "198.18.10.66/32",
                                        "limits_requests_per_second": "100"})  # fmt: skip
    assert made.status_code == 302
    web = store.get(Listener, "web")
    assert web is not None
    assert [str(n) for n in web.obj.allowed_sources] == ["198.18.10.0/24", "2001:db8::/32"]
    assert [str(n) for n in web.obj.denied_sources] == ["198.18.10.66/32"]
    assert web.obj.limits.requests_per_second == 100
    form = client.get("/listeners/web/edit").get_data(as_text=True)
    assert "198.18.10.0/24\n2001:db8::/32</textarea>" in form
    assert 'name="limits_requests_per_second" value="100"' in form
    cleared = auth.post("/listeners/web/edit", {**FORM, "version": str(web.revision)})
    assert cleared.status_code == 302
    assert store.get(Listener, "web").obj.allowed_sources == ()


def test_a_tcp_listener_takes_connection_limits_and_charts_its_drops(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    """#17 item 3 at L4: max connections and a connection rate, not a request rate."""
    auth.login("alice")
    tcp = {**FORM, "protocol": "TCP", "hc_type": "tcp", "hc_path": "", "idle_timeout_s": "",
           "request_timeout_s": ""}  # fmt: skip
    refused = auth.post("/listeners/new", {**tcp, "limits_requests_per_second": "100"})
    assert refused.status_code == 422
    assert "IPVS sees no requests" in refused.get_data(as_text=True)
    made = auth.post("/listeners/new", {**tcp, "limits_max_connections": "300",
                                        "limits_connections_per_second": "50"})  # fmt: skip
    assert made.status_code == 302
    assert store.get(Listener, "web").obj.limits.model_dump(exclude_none=True) == {
        "max_connections": 300, "connections_per_second": 50}  # fmt: skip
    page = client.get("/listeners/web").get_data(as_text=True)
    assert 'data-series="rate_limited_connections_per_second"' in page


def test_the_listener_form_sets_tls_both_ways(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    """#17 item 4: client certificates only where TLS ends (named, nothing saved), and the
    backends' CA and server name kept through an edit."""
    auth.login("alice")
    ca = self_signed("clients.shop.test").chain_pem
    refused = auth.post("/listeners/new", {**FORM, "client_auth": "required", "client_ca_pem": ca})
    assert refused.status_code == 422
    assert "client_certificates: only HTTPS and TLS listeners terminate TLS" in refused.get_data(
        as_text=True)  # fmt: skip
    backend = {"backend_protocol": "tls", "backend_ca_pem": ca, "backend_sni": "api.shop.test"}
    made = auth.post("/listeners/new", {**FORM, **backend})
    assert made.status_code == 302
    stored = store.get(Listener, "web")
    assert stored is not None
    backend_tls = stored.obj.backend_tls
    assert backend_tls is not None
    assert (backend_tls.sni, backend_tls.ca_pem) == ("api.shop.test", ca.strip())
    form = client.get("/listeners/web/edit").get_data(as_text=True)
    assert 'name="backend_sni" value="api.shop.test"' in form


@pytest.mark.parametrize(
    ("kind", "source"),
    [
        ("Gateway", "the HTTPRoutes and GRPCRoutes attached to Gateway shop/edge"),
        ("Ingress", "Ingress shop/edge's rules and annotations"),
    ],
)
def test_gateway_and_ingress_owned_listeners_and_their_rules_are_read_only(
    client: FlaskClient, auth: Auth, store: Store, kind: str, source: str
) -> None:
    store.put(
        Listener.model_validate(
            {"name": "shop-edge-port-80", "load_balancer": "public", "protocol": "HTTP",
             "port": 80, "target_port": 80, "owner": {"kind": kind, "name": "shop/edge"},
             "routes": [{"name": "cart", "path_segments": "/cart",
                         "forward_to": [{"service": "shop/cart", "target_port": 80}]},
                        {"name": "no-route-matched", "fixed_response": {"status": 404}}]}
        )
    )  # fmt: skip
    auth.login("alice")
    detail = client.get("/listeners/shop-edge-port-80").get_data(as_text=True)
    assert f"From {kind} shop/edge: read-only here, change the {kind} instead" in detail
    assert source in detail
    assert 'id="edit"' not in detail
    assert 'id="add-rule"' not in detail
    edit = client.get("/listeners/shop-edge-port-80/edit", follow_redirects=True)
    assert f"belongs to {kind} shop/edge" in edit.get_data(as_text=True)
    listed = client.get(f"/listeners?owner={kind}").get_data(as_text=True)
    assert "shop-edge-port-80" in listed


def test_a_gateways_tcp_listener_shows_its_one_rules_weighted_targets(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    store.put(
        Listener.model_validate(
            {"name": "shop-edge-port-5432", "load_balancer": "public", "protocol": "TCP",
             "port": 5432, "target_port": 5432, "scheduler": "wrr", "health_check": None,
             "owner": {"kind": "Gateway", "name": "shop/edge"},
             "routes": [{"name": "db", "forward_to": [
                 {"service": "shop/db", "target_port": 5432, "weight": 1},
                 {"service": "shop/db-next", "target_port": 5432, "weight": 3}]}]}
        )
    )  # fmt: skip
    auth.login("alice")
    detail = client.get("/listeners/shop-edge-port-5432").get_data(as_text=True)
    assert "the TCPRoutes attached to Gateway shop/edge" in detail
    assert "the Services its rules name" in detail
    assert "share the connections by weight" in detail
    shares = re.findall(r'class="share"[^>]*>([^<]+)<', detail)
    services = re.findall(r"Service <code>([^<]+)</code>", detail)
    assert list(zip(services, shares, strict=True)) == [("shop/db", "25%"), ("shop/db-next", "75%")]


def test_a_tls_listener_says_whether_envoy_ends_the_tls(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    for name, certificates in (("pass", []), ("term", ["site"])):
        store.put(
            Listener.model_validate(
                {"name": name, "load_balancer": "public", "protocol": "TLS", "port": 8443,
                 "target_port": "tls", "selector": {"match_labels": {"app": "shop"}},
                 "certificates": certificates, "owner": {"kind": "Operator", "name": "alice"}}
            )
        )  # fmt: skip
    auth.login("alice")
    modes = {
        name: re.findall(r'id="tls-mode">([^<]+)<', client.get(f"/listeners/{name}").get_data(
            as_text=True))
        for name in ("pass", "term")
    }  # fmt: skip
    assert modes == {"pass": ["passed through: the backends end it"],
                     "term": ["ended by Envoy: the backends get the plain stream"]}  # fmt: skip


def test_service_owned_listeners_cannot_be_edited_from_the_form(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    store.put(
        Listener.model_validate(
            {"name": "shop-cart-http", "load_balancer": "public", "protocol": "HTTP",
             "port": 8080, "target_port": "http", "owner": {"kind": "Service", "name": "shop/cart"}}
        )
    )  # fmt: skip
    auth.login("alice")
    detail = client.get("/listeners/shop-cart-http").get_data(as_text=True)
    assert "From Service shop/cart: read-only here" in detail
    assert 'id="edit"' not in detail
    edit = client.get("/listeners/shop-cart-http/edit", follow_redirects=True)
    assert "belongs to Service shop/cart" in edit.get_data(as_text=True)
    before = store.revision()
    assert auth.post("/listeners/shop-cart-http/edit", FORM).status_code == 302
    assert store.revision() == before


def test_viewers_cannot_edit(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    ops.add_listener(
        {"name": "web", "load_balancer": "public", "protocol": "HTTP", "port": 80,
         "selector": {"match_labels": {"app": "shop"}}, "target_port": "http"}
    )  # fmt: skip
    auth.login("victor")
    listing = client.get("/listeners").get_data(as_text=True)
    assert "New listener" not in listing
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert 'id="edit"' not in detail
    assert client.get("/listeners/new").status_code == 403
    before = store.revision()
    assert auth.post("/listeners/new", {**FORM, "name": "x", "port": "81"}).status_code == 403
    assert auth.post("/listeners/web/delete", {"version": "1"}).status_code == 403
    assert auth.post("/instances", {"name": "x", "vip": "198.18.0.30"}).status_code == 403
    assert store.revision() == before


def test_instances_and_pools_pages(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    auth.login("alice")
    assert auth.post("/instances", {"name": "edge", "vip": "198.18.0.20"}).status_code == 302
    bad = auth.post("/instances", {"name": "edge2", "vip": "10.0.0.300"})
    assert bad.status_code == 422
    assert 'data-field="lb.vip"' in bad.get_data(as_text=True)
    shared = {"name": "shared", "vip": "198.18.0.21", "namespace": "shop",
              "allowed_namespaces": "web, api"}  # fmt: skip
    assert auth.post("/instances", shared).status_code == 302
    made = store.get(LoadBalancer, "shared")
    assert made is not None
    assert (made.obj.namespace, made.obj.allowed_namespaces) == ("shop", ("web", "api"))
    assert made.obj.admits("api")
    assert not made.obj.admits("other")
    zoned = auth.post("/instances", {"name": "edge3", "vip": "fe80::1%eth0"})
    assert zoned.status_code == 422
    assert "zone id" in zoned.get_data(as_text=True)
    pool = {
        "name": "extra",
        "cidrs": "198.18.4.0/24",
        "reserved": "198.18.4.1",
        "auto_assign": "on",
    }
    assert auth.post("/pools", pool).status_code == 403  # pools are the admins'
    admin = Auth(client.application.test_client())
    admin.login("admin")
    assert admin.post("/pools", pool).status_code == 302
    auth.post("/listeners/new", {**FORM, "load_balancer": "edge"})
    version = store.get(Listener, "web")
    page = auth.post("/instances/edge/delete", {"version": "999999"})
    assert page.status_code == 422
    assert "still has listeners: web" in page.get_data(as_text=True)
    text = client.get("/instances").get_data(as_text=True)
    assert 'data-instance="edge"' in text
    assert "198.18.4.0/24" in text
    assert version is not None


def test_the_instance_form_takes_a_namespace_selector_and_the_namespace_quota(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    """The console's form (#14): namespaces admitted by labels, `key=value` comma-separated;
    a bad selector and an instance beyond the namespace's quota are 422s naming the field."""
    client.application.config["INSTANCES_PER_NAMESPACE"] = 1
    auth.login("alice")
    form = {
        "name": "teams",
        "vip": "198.18.0.22",
        "allowed_namespace_selector": "team=retail, tier=gold",
    }
    assert auth.post("/instances", form).status_code == 302
    teams = store.get(LoadBalancer, "teams")
    assert teams is not None
    assert teams.obj.admits("shop", {"team": "retail", "tier": "gold"})
    assert not teams.obj.admits("shop", {"team": "retail"})
    bad = auth.post(
        "/instances", {**form, "name": "bad", "allowed_namespace_selector": "team in (x"}
    )
    assert bad.status_code == 422
    assert 'data-field="lb.allowed_namespace_selector"' in bad.get_data(as_text=True)
    mine = {"name": "shop-a", "vip": "198.18.0.23", "namespace": "shop"}
    assert auth.post("/instances", mine).status_code == 302
    over = auth.post("/instances", {**mine, "name": "shop-b", "vip": "198.18.0.24"})
    assert over.status_code == 422
    text = over.get_data(as_text=True)
    assert 'data-field="lb.namespace"' in text
    assert "cmi.instances_per_namespace" in text
    assert store.get(LoadBalancer, "shop-b") is None


def test_certificate_upload_page(client: FlaskClient, auth: Auth, store: Store) -> None:
    auth.login("alice")
    good = chain("shop.example.test", days=20)
    uploaded = auth.post(
        "/certificates", {"name": "shop", "chain_pem": good.chain_pem, "key_pem": good.key_pem}
    )
    assert uploaded.status_code == 302
    listing = client.get("/certificates").get_data(as_text=True)
    assert "CN=shop.example.test" in listing
    assert "expires in under 30 days" in listing
    assert "PRIVATE KEY" not in listing
    expired = chain(days=-1)
    refused = auth.post(
        "/certificates", {"name": "old", "chain_pem": expired.chain_pem, "key_pem": expired.key_pem}
    )
    assert refused.status_code == 422
    assert "the certificate expired on" in refused.get_data(as_text=True)


def test_a_certificate_from_a_secret_shows_its_source_and_no_delete(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    auth.login("alice")
    good = chain("shop.example.test")
    assert auth.post(
        "/certificates", {"name": "shop", "chain_pem": good.chain_pem, "key_pem": good.key_pem}
    ).status_code == 302  # fmt: skip
    renewed = chain("web.example.test")
    store.put(Certificate(name="web-tls", chain_pem=renewed.chain_pem, key_ref="k8s-web",
                          namespace="shop", owner=Owner(kind=OwnerKind.SERVICE,
                                                        name="shop/web")))  # fmt: skip
    page = client.get("/certificates").get_data(as_text=True)
    rows = {
        name: page[page.index(f'data-certificate="{name}"') :].split("</tr>", 1)[0]
        for name in ("shop", "web-tls")
    }
    assert "Secret of Service shop/web" in rows["web-tls"]
    assert "<form" not in rows["web-tls"]
    assert "read-only" in rows["web-tls"]
    assert "uploaded" in rows["shop"]
    assert "Delete" in rows["shop"]


def test_audit_page_filters(client: FlaskClient, auth: Auth, ops: Operations) -> None:
    auth.login("alice")
    auth.post("/listeners/new", FORM)
    page = client.get("/audit?who=alice&kind=Listener").get_data(as_text=True)
    assert "Listener web" in page
    assert "setup" not in page  # the fixture's writes are someone else's
    assert "Nothing recorded" in client.get("/audit?who=nobody").get_data(as_text=True)


def test_users_and_tokens(client: FlaskClient, auth: Auth, store: Store) -> None:
    auth.login("admin")
    assert (
        auth.post("/users", {"name": "olga", "password": "short", "role": "operator"}).status_code
        == 422
    )
    assert (
        auth.post("/users", {"name": "olga", "password": PASSWORD, "role": "operator"}).status_code
        == 302
    )
    created = auth.post("/tokens", {"name": "ci", "role": "viewer"})
    secret = created.get_data(as_text=True).split('id="token-secret">')[1].split("<")[0]
    api = client.application.test_client()
    bearer = {"Authorization": f"Bearer {secret}"}
    me = api.get("/api/v1/me", headers=bearer).get_json()
    assert (me["name"], me["role"]) == ("admin", "viewer")  # a token may have less than its owner
    assert api.post("/api/v1/listeners", headers=bearer, json={}).status_code == 403
    entries = AuditLog(store).entries(kind="User")
    assert [(e.action, e.key, e.who) for e in entries] == [("create", "olga", "admin")]
    assert "password" not in str(entries[0].after)
    assert "ci" in client.get("/tokens").get_data(as_text=True)
    revoke = AuditLog(store).entries(kind="Token")[0].key
    assert revoke == me["token"]
    assert auth.post(f"/tokens/{revoke}/delete").status_code == 302
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_deleted_or_demoted_user_is_signed_out(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    auth.login("alice")
    assert client.get("/listeners").status_code == 200
    from web.auth import Accounts, Role

    Accounts(store).update_user("alice", role=Role.VIEWER)
    assert client.get("/listeners").status_code == 302


def test_secret_key_is_generated_private(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    make_app(redis_server, store, tmp_path, SECRET_KEY=None)
    path = tmp_path / "secret-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text().strip()
    assert len(key) >= 32
    second = make_app(redis_server, store, tmp_path, SECRET_KEY=None)
    assert second.config["SECRET_KEY"] == key


def test_create_admin_command(redis_server: RedisServer, store: Store, tmp_path: Path) -> None:
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": ""}  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["console", "create-admin", "root", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert result.exit_code == 0, result.output
    again = runner.invoke(
        main,
        ["console", "create-admin", "root", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert again.exit_code == 1
    assert "exists" in again.output
    weak = runner.invoke(
        main, ["console", "create-admin", "x", "--password-stdin"], input="abc\n", env=env
    )
    assert weak.exit_code == 1
    assert "password: at least 10 characters" in weak.output
    app = make_app(redis_server, store, tmp_path)
    auth = Auth(app.test_client())
    assert auth.login("root", PASSWORD).status_code == 302
    assert "root · admin" in auth.client.get("/").get_data(as_text=True)


def test_the_status_page_says_whether_a_controller_leads(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    auth.login()
    page = client.get("/").get_data(as_text=True)
    assert 'data-state="none"' in page
    assert "No cmi has led yet" in page

    board = StatusBoard(store)
    board.controller_beat("cmi-a", 3, 7)
    fragment = client.get("/status/controller").get_data(as_text=True)
    assert 'data-state="leading"' in fragment
    assert "cmi <strong>cmi-a</strong> (epoch 3) at revision 7" in fragment

    old = ControllerBeat("cmi-a", 3, 7, time.time() - 60)  # as if it stopped a minute ago
    store.redis.set(store.key("status", "cmi"), json.dumps(asdict(old)))
    page = client.get("/").get_data(as_text=True)
    assert 'data-state="silent"' in page
    assert "last led 60 s ago" in page


def test_the_status_page_shows_a_consumer_that_holds_its_last_good_state(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    auth.login()
    assert "data-alarm" not in client.get("/").get_data(as_text=True)
    board = StatusBoard(store)
    board.alarm("xds", "the store is empty: <nothing> wrote it")
    fragment = client.get("/status/controller").get_data(as_text=True)
    assert '<p class="flash error" data-alarm="xds">' in fragment
    assert "the store is empty: &lt;nothing&gt; wrote it" in fragment  # escaped
    board.alarm("xds", None)
    assert "data-alarm" not in client.get("/status/controller").get_data(as_text=True)


def test_a_forged_status_report_never_breaks_a_page(
    client: FlaskClient, auth: Auth, store: Store
) -> None:
    """A node taken over may write its own status: a malformed entry is ignored (#14)."""
    store.redis.set(store.key("l4", "evil", "status"), b'{"tier": "l4", "node": []}')
    store.redis.sadd(store.key("status", "l4-nodes"), "evil")
    store.redis.hset(store.key("status", "l7"), "evil", b"not json")
    auth.login("admin")
    for path in ("/", "/listeners", "/api/v1/status", "/metrics"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "path", ["/instances/edge/delete", "/pools/extra/delete", "/certificates/shop/delete"]
)
def test_a_malformed_version_is_a_400_naming_it(client: FlaskClient, auth: Auth, path: str) -> None:
    """Hostile form input answers 400 with the field named, never 500 (#14)."""
    auth.login("admin")
    answer = auth.post(path, {"version": "1e9999; drop"})
    assert answer.status_code == 400
    assert "version: must be a whole number" in answer.get_data(as_text=True)


# -- forwarding rules in the console (#17 item 1) ------------------------------------------

RULE = {
    "name": "api", "hosts": "shop.example, *.shop.example", "match": "prefix",
    "match_value": "/api/", "method": "GET", "headers": "x-canary=1\nx-debug\nx-tier~gold|silver",
    "query_params": "v=2", "action": "forward",
    "targets": "app=api weight=90\napp=api-v2,env in (prod) port=8080 weight=10",
    "rewrite_path_prefix": "/", "rewrite_host": "api.internal",
    "request_headers": "set x-from: openslb\nadd x-trace: 1\nremove x-secret",
    "response_headers": "set cache-control: no-store", "timeout_s": "5", "retry_attempts": "3",
    "retry_per_try_timeout_s": "1.5", "retry_on": ["5xx", "reset"],
}  # fmt: skip


def put_service(store: Store, name: str, labels: dict[str, str], ready: int = 1) -> None:
    backends = [{"address": f"198.18.30.{i + 1}", "port": 8080} for i in range(ready)]
    store.put(Service.model_validate(
        {"namespace": "shop", "name": name, "labels": labels, "load_balancer": "public",
         "ports": [{"name": "http", "port": 80}], "backends": {"http": backends}}
    ))  # fmt: skip


def http_listener(ops: Operations, *rules: str, protocol: str = "HTTP") -> int:
    """An operator's listener `web` with rules named `rules` (each to the listener's own
    Services); its revision."""
    stored = ops.add_listener(
        {"name": "web", "load_balancer": "public", "protocol": protocol, "port": 80,
         "selector": {"match_labels": {"app": "shop"}}, "target_port": "http",
         "routes": [{"name": r, "path_prefix": f"/{r}/"} for r in rules]}
    )  # fmt: skip
    return stored.revision


def rule_names(store: Store) -> list[str]:
    return [r.name for r in store.get(Listener, "web").obj.routes]


def test_add_a_rule_from_the_form(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    put_service(store, "api", {"app": "api"}, ready=2)
    put_service(store, "api-v2", {"app": "api-v2", "env": "prod"})
    version = http_listener(ops, "first")
    auth.login("alice")
    form = client.get("/listeners/web/rules/new").get_data(as_text=True)
    assert 'id="rule-form"' in form
    assert f'name="version" value="{version}"' in form
    added = auth.post("/listeners/web/rules/new", {**RULE, "version": str(version)})
    assert added.status_code == 302, added.get_data(as_text=True)
    assert added.headers["Location"] == "/listeners/web#rules"
    api = store.get(Listener, "web").obj.routes[1]
    assert rule_names(store) == ["first", "api"]  # last, no position given
    assert (api.hosts, api.path_prefix, api.method.value) == (
        ("shop.example", "*.shop.example"),
        "/api/",
        "GET",
    )
    assert [(m.name, m.type.value, m.value) for m in api.headers] == [
        ("x-canary", "exact", "1"), ("x-debug", "present", ""), ("x-tier", "regex", "gold|silver")
    ]  # fmt: skip
    assert [(m.name, m.value) for m in api.query_params] == [("v", "2")]
    assert [(str(t.selector), t.target_port, t.weight) for t in api.forward_to] == [
        ("app=api", None, 90), ("app=api-v2,env in (prod)", 8080, 10)
    ]  # fmt: skip
    assert api.rewrite is not None
    assert (api.rewrite.path_prefix, api.rewrite.host) == ("/", "api.internal")
    changes = api.request_headers
    assert [(h.name, h.value) for h in changes.set] == [("x-from", "openslb")]
    assert [(h.name, h.value) for h in changes.add] == [("x-trace", "1")]
    assert changes.remove == ("x-secret",)
    assert [(h.name, h.value) for h in api.response_headers.set] == [("cache-control", "no-store")]
    assert api.timeout_s == 5
    assert api.retry is not None
    assert (api.retry.attempts, api.retry.per_try_timeout_s) == (3, 1.5)
    assert [r.value for r in api.retry.retry_on] == ["5xx", "reset"]

    # The table shows each target's share and the Services it picks now.
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "Rule api saved as #2 of listener web" in detail
    row = detail.split('data-route="api"')[1].split("</tr>")[0]
    first, second = row.split('data-target="1"')
    assert "90%</strong> to Services matching <code>app=api</code>" in first
    assert 'data-service="shop/api"' in first
    assert "shop/api-v2" not in first
    assert "10%</strong> to Services matching <code>app=api-v2,env in (prod)</code>" in second
    assert 'data-service="shop/api-v2"' in second


def test_redirect_and_fixed_response_rules_at_a_position(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a", "b")
    auth.login("alice")
    moved = {"name": "old-shop", "match": "prefix", "match_value": "/old/", "action": "redirect",
             "redirect_scheme": "https", "redirect_host": "shop.example",
             "redirect_path_prefix": "/new/", "redirect_code": "308", "position": "1",
             "targets": "app=ignored", "timeout_s": "9"}  # fmt: skip
    assert (
        auth.post("/listeners/web/rules/new", {**moved, "version": str(version)}).status_code == 302
    )
    assert rule_names(store) == ["old-shop", "a", "b"]
    redirect = store.get(Listener, "web").obj.routes[0]
    assert redirect.redirect is not None
    assert redirect.redirect.model_dump(mode="json", exclude_none=True) == {
        "scheme": "https", "host": "shop.example", "path_prefix": "/new/", "code": 308
    }  # fmt: skip
    assert (redirect.forward_to, redirect.timeout_s) == ((), None)  # another action's fields
    down = {"name": "down", "match": "exact", "match_value": "/maintenance",
            "action": "fixed_response", "fixed_response_status": "503",
            "fixed_response_body": "back soon\r\n", "position": "3",
            "version": str(store.get(Listener, "web").revision)}  # fmt: skip
    assert auth.post("/listeners/web/rules/new", down).status_code == 302
    assert rule_names(store) == ["old-shop", "a", "down", "b"]
    answer = store.get(Listener, "web").obj.routes[2].fixed_response
    assert answer is not None
    assert (answer.status, answer.body) == (503, "back soon\n")  # as typed, in the model's lines
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "redirect 308 to https://shop.example" in detail
    assert "answer 503 &#34;back soon" in detail


def test_edit_a_rule_in_place_and_an_unchanged_form_keeps_it(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a", "c")
    auth.login("alice")
    added = auth.post("/listeners/web/rules/new", {**RULE, "position": "2", "version": version})
    assert added.status_code == 302
    before = store.get(Listener, "web")
    assert rule_names(store) == ["a", "api", "c"]
    form = client.get("/listeners/web/rules/api/edit").get_data(as_text=True)
    for shown in (
        "app=api weight=90\napp=api-v2,env in (prod) port=8080 weight=10",
        "x-canary=1\nx-debug\nx-tier~gold|silver",
        'value="shop.example *.shop.example"',
        "set x-from: openslb\nadd x-trace: 1\nremove x-secret",
        'value="reset" checked',
        'value="/api/"',
        'name="name" value="api" readonly',
    ):
        assert shown in form, shown

    # What the form shows, sent back unchanged, is the same rule.
    shown_form = rule_to_form(before.obj.routes[1])
    unchanged = {k: v if isinstance(v, list) else str(v) for k, v in shown_form.items()}
    saved = auth.post("/listeners/web/rules/api/edit", {**unchanged, "version": before.revision})
    assert saved.status_code == 302
    assert store.get(Listener, "web").obj.routes == before.obj.routes

    # A change replaces it where it stands; the name in the URL is the one edited.
    changed = {**RULE, "name": "renamed", "targets": "", "rewrite_path_prefix": "",
               "match": "regex", "match_value": "/api/v[0-9]+/.*"}  # fmt: skip
    version = store.get(Listener, "web").revision
    edited = auth.post("/listeners/web/rules/api/edit", {**changed, "version": version})
    assert edited.status_code == 302
    assert rule_names(store) == ["a", "api", "c"]
    api = store.get(Listener, "web").obj.routes[1]
    assert (api.path_prefix, api.path_regex, api.forward_to) == (None, "/api/v[0-9]+/.*", ())
    assert client.get("/listeners/web/rules/nope/edit").status_code == 404


def test_a_grpc_rule_with_its_own_backend_protocol_is_added_shown_and_kept_by_the_form(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a")
    auth.login("alice")
    calls = {"name": "calls", "match": "grpc", "match_value": "shop.v1.Cart", "action": "forward",
             "grpc_only": "1", "backend_protocol": "h2c", "targets": "app=cart"}  # fmt: skip
    assert auth.post("/listeners/web/rules/new", {**calls, "version": version}).status_code == 302
    stored = store.get(Listener, "web")
    rule = stored.obj.routes[-1]
    assert (rule.grpc_only, rule.backend_protocol, rule.grpc_service) == (
        True, BackendProtocol.H2C, "shop.v1.Cart")  # fmt: skip
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "gRPC calls only" in detail
    assert "over <code>h2c</code>" in detail
    form = client.get("/listeners/web/rules/calls/edit").get_data(as_text=True)
    assert 'name="grpc_only" value="1" checked' in form
    assert "<option selected>h2c</option>" in form
    unchanged = {k: v if isinstance(v, list) else str(v) for k, v in rule_to_form(rule).items()}
    saved = auth.post("/listeners/web/rules/calls/edit", {**unchanged, "version": stored.revision})
    assert saved.status_code == 302
    assert store.get(Listener, "web").obj.routes == stored.obj.routes
    whole = {**unchanged, "match": "exact", "match_value": "/old", "rewrite_path": "/new"}
    version = store.get(Listener, "web").revision
    assert (
        auth.post("/listeners/web/rules/calls/edit", {**whole, "version": version}).status_code
        == 302
    )
    rewrite = store.get(Listener, "web").obj.routes[-1].rewrite
    assert rewrite is not None
    assert rewrite.path == "/new"
    assert "path becomes <code>/new</code>" in client.get("/listeners/web").get_data(as_text=True)
    plain = {**unchanged, "grpc_only": "", "backend_protocol": ""}
    version = store.get(Listener, "web").revision
    assert (
        auth.post("/listeners/web/rules/calls/edit", {**plain, "version": version}).status_code
        == 302
    )
    rule = store.get(Listener, "web").obj.routes[-1]
    assert (rule.grpc_only, rule.backend_protocol) == (False, None)


BAD_RULES = {
    "regex": ({"match": "regex", "match_value": r"(a)\1"}, "match_value", "not an RE2 regular"),
    "weights": ({"targets": "app=a weight=0\napp=b weight=0"}, "targets", "weight above 0"),
    "weight-type": ({"targets": "app=a weight=x"}, "targets", "#1 weight: Input should be"),
    "selector": ({"targets": "app=a\napp in (b"}, "targets", "#2: unbalanced"),
    "header-twice": ({"headers": "x-a=1\nx-a=2"}, "headers", "#2 name: &#39;x-a&#39; is matched"),
    "reserved-header": ({"headers": "host=x"}, "headers", "#1 name: &#39;host&#39; cannot be"),
    "change-line": ({"request_headers": "rename x"}, "request_headers", "write &#39;set NAME"),
    "reserved-change": ({"response_headers": "set connection: x"}, "response_headers", "set #1"),
    "redirect-prefix": (
        {"match": "any", "action": "redirect", "redirect_path_prefix": "/new/"},
        "redirect_path_prefix", "the rule needs path_prefix",
    ),
    "redirect-port": (
        {"action": "redirect", "redirect_port": "99999"}, "redirect_port", "less than or equal to"
    ),
    "status": (
        {"action": "fixed_response", "fixed_response_status": "99"}, "fixed_response_status",
        "greater than or equal to 200",
    ),
    "name": ({"name": "Bad_Name"}, "name", "Bad_Name"),
    "taken": ({"name": "first"}, "name", "has a rule first already"),
    "no-path": ({"match_value": ""}, "match_value", "give the path prefix to match"),
    "grpc-method": ({"grpc_method": "Get"}, "grpc_method", "needs grpc_service"),
    "position": ({"position": "9"}, "position", "between 1 (tried first) and 2 (last)"),
    "timeout": ({"timeout_s": "soon"}, "timeout_s", "valid integer"),
    "retry-on": ({"retry_on": ["sometimes"]}, "retry_on", "Input should be"),
    "host": ({"hosts": "shop..example"}, "hosts", "#1:"),
    "service": ({"targets": "service shop/API"}, "targets", "NAMESPACE/NAME"),
}  # fmt: skip
"""Bad rule form input: the change to RULE, the form field it is shown at, and what it says."""


@pytest.mark.parametrize(("change", "field", "shown"), BAD_RULES.values(), ids=BAD_RULES.keys())
def test_bad_rule_input_is_shown_by_field_and_saves_nothing(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store,
    change: dict[str, str], field: str, shown: str,
) -> None:  # fmt: skip
    version = http_listener(ops, "first")
    auth.login("alice")
    before = store.revision()
    page = auth.post("/listeners/web/rules/new", {**RULE, **change, "version": str(version)})
    assert page.status_code == 422
    text = page.get_data(as_text=True)
    assert "Nothing was saved" in text
    error = text.split(f'class="field-error" data-field="{field}">')[1].split("</div>")[0]
    assert shown in error
    assert store.revision() == before
    assert f'name="{field}"' in text  # shown next to its field, in the form as it was sent
    for value in change.values():
        assert str(escape(value if isinstance(value, str) else value[0])) in text


def test_move_rules_up_and_down_and_delete_them(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a", "b", "c")
    auth.login("alice")
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert 'draggable="true"' in detail
    assert 'src="/static/rules.js"' in detail
    assert 'aria-label="Move rule a up" disabled' in detail
    assert 'aria-label="Move rule c down" disabled' in detail
    assert 'data-confirm="Delete rule b of listener web?"' in detail
    row = detail.split('data-route="b"')[1].split("</tr>")[0]
    assert 'action="/listeners/web/rules/b/move"' in row
    assert 'name="position" value="0"' in row  # up
    assert 'name="position" value="2"' in row  # down

    up = auth.post("/listeners/web/rules/c/move", {"position": "1", "version": str(version)})
    assert up.status_code == 302
    assert up.headers["Location"] == "/listeners/web#rules"
    assert rule_names(store) == ["a", "c", "b"]
    version = store.get(Listener, "web").revision
    again = auth.post("/listeners/web/rules/a/move", {"position": "1", "version": version})
    assert again.status_code == 302
    assert rule_names(store) == ["c", "a", "b"]
    assert "Rule a moved to #2" in client.get("/listeners/web").get_data(as_text=True)

    version = store.get(Listener, "web").revision
    far = auth.post("/listeners/web/rules/a/move", {"position": "7", "version": str(version)})
    assert far.status_code == 422
    assert "position 7 is not between 0 and 2" in far.get_data(as_text=True)
    deleted = auth.post("/listeners/web/rules/a/delete", {"version": str(version)})
    assert deleted.status_code == 302
    assert rule_names(store) == ["c", "b"]
    version = store.get(Listener, "web").revision
    gone = auth.post("/listeners/web/rules/a/delete", {"version": version})
    assert gone.status_code == 422
    assert "has no rule named &#39;a&#39;" in gone.get_data(as_text=True)


def test_a_stale_version_is_a_409_and_saves_nothing(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a", "b")
    ops.put_rule("web", {"name": "meanwhile"})  # someone else, after the page was opened
    auth.login("alice")
    before = store.revision()
    for path, data in (
        ("/listeners/web/rules/new", RULE),
        ("/listeners/web/rules/a/edit", {**RULE, "name": "a"}),
        ("/listeners/web/rules/b/move", {"position": "0"}),
        ("/listeners/web/rules/a/delete", {}),
        ("/listeners/web/rules/to-https", {}),
    ):
        page = auth.post(path, {**data, "version": str(version)})
        assert page.status_code == 409, path
        text = page.get_data(as_text=True)
        assert "Someone else changed this listener since you opened" in text
        assert 'data-route="meanwhile"' in text or 'name="targets"' in text  # as it is now
    assert store.revision() == before
    assert rule_names(store) == ["a", "b", "meanwhile"]


def test_redirect_http_to_https_in_one_click(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a")
    auth.login("alice")
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert 'action="/listeners/web/rules/to-https"' in detail
    assert ">Redirect HTTP to HTTPS</button>" in detail
    assert auth.post("/listeners/web/rules/to-https", {"version": str(version)}).status_code == 302
    assert rule_names(store) == ["to-https", "a"]
    rule = store.get(Listener, "web").obj.routes[0]
    assert rule.redirect is not None
    assert (rule.redirect.scheme.value, rule.redirect.code.value) == ("https", 301)
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert "Redirect HTTP to HTTPS</button>" not in detail
    assert "redirect 301 to https://same host" in detail
    before = store.revision()
    again = auth.post("/listeners/web/rules/to-https", {"version": str(store.revision())})
    assert again.status_code == 422
    assert store.revision() == before


def test_no_https_redirect_button_where_it_would_loop_or_cannot_be(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, protocol="GRPC")
    ops.put_rule("web", {"name": "all", "grpc_service": "shop.v1.Cart"})
    auth.login("alice")
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert 'id="add-rule"' in detail
    assert "Redirect HTTP to HTTPS" not in detail
    before = store.revision()
    assert auth.post("/listeners/web/rules/to-https", {"version": str(version)}).status_code == 422
    assert store.revision() == before


def test_the_rule_form_previews_each_target_line(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    put_service(store, "api", {"app": "api"}, ready=3)
    put_service(store, "shop", {"app": "shop"}, ready=2)
    http_listener(ops)
    auth.login("alice")
    form = client.get("/listeners/web/rules/new").get_data(as_text=True)
    assert 'hx-get="/listeners/web/rules/preview"' in form
    assert 'data-service="shop/shop"' in form  # no line yet: the listener's Services
    preview = client.get(
        "/listeners/web/rules/preview", query_string={"targets": "app=api weight=3\n\nlistener"}
    ).get_data(as_text=True)
    first, second = preview.split('data-line="2"')
    assert "75%" in first
    assert 'data-service="shop/api"' in first
    assert "3/3 ready" in first
    assert "25%" in second
    assert 'data-service="shop/shop"' in second
    bad = client.get("/listeners/web/rules/preview", query_string={"targets": "app in (x"})
    assert 'class="field-error" data-field="targets">#1:' in bad.get_data(as_text=True)


def test_a_rule_forwards_to_one_service_by_name(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    """`service NAMESPACE/NAME` picks that Service whatever its labels: in the preview,
    the stored rule, the listener's table and the edit form."""
    put_service(store, "cart", {"team": "carts"}, ready=2)
    version = http_listener(ops)
    auth.login("alice")
    lines = "service shop/cart port=8080 weight=3\nservice shop/gone"
    preview = client.get("/listeners/web/rules/preview", query_string={"targets": lines}).get_data(
        as_text=True
    )
    cart, gone = preview.split('data-line="2"')
    assert "75%</strong> to Service <code>shop/cart</code>, port 8080" in cart
    assert 'data-service="shop/cart"' in cart
    assert 'data-matches="0"' in gone
    added = auth.post("/listeners/web/rules/new", {**RULE, "targets": lines, "version": version})
    assert added.status_code == 302, added.get_data(as_text=True)
    (rule,) = [r for r in store.get(Listener, "web").obj.routes if r.name == "api"]
    assert [(t.service, t.selector, t.target_port, t.weight) for t in rule.forward_to] == [
        ("shop/cart", None, 8080, 3), ("shop/gone", None, None, 1)
    ]  # fmt: skip
    detail = client.get("/listeners/web").get_data(as_text=True)
    row = detail.split('data-route="api"')[1].split("</tr>")[0]
    assert "75%</strong> to Service <code>shop/cart</code>, port 8080" in row
    assert 'data-service="shop/cart"' in row
    form = client.get("/listeners/web/rules/api/edit").get_data(as_text=True)
    assert lines in form


def test_a_rule_matches_whole_path_segments_from_the_form(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops)
    auth.login("alice")
    form = client.get("/listeners/web/rules/new").get_data(as_text=True)
    assert '<option value="segments" >path prefix of whole segments</option>' in form
    rule = {**RULE, "match": "segments", "match_value": "/docs/", "rewrite_path_prefix": "",
            "version": version}  # fmt: skip
    added = auth.post("/listeners/web/rules/new", rule)
    assert added.status_code == 302, added.get_data(as_text=True)
    (api,) = [r for r in store.get(Listener, "web").obj.routes if r.name == "api"]
    assert (api.path_segments, api.path_prefix) == ("/docs", None)  # the trailing / ignored
    edit = client.get("/listeners/web/rules/api/edit").get_data(as_text=True)
    assert '<option value="segments" selected>' in edit


def test_viewers_cannot_change_rules(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    version = http_listener(ops, "a", "b")
    auth.login("victor")
    detail = client.get("/listeners/web").get_data(as_text=True)
    assert 'data-route="a"' in detail
    for control in ('id="add-rule"', "drag-handle", "/rules/a/move", "/rules/to-https", "rules.js"):
        assert control not in detail
    assert "Operators edit them here" in detail
    assert client.get("/listeners/web/rules/new").status_code == 403
    assert client.get("/listeners/web/rules/a/edit").status_code == 403
    before = store.revision()
    for path in ("/listeners/web/rules/new", "/listeners/web/rules/a/edit",
                 "/listeners/web/rules/a/move", "/listeners/web/rules/a/delete",
                 "/listeners/web/rules/to-https"):  # fmt: skip
        page = auth.post(path, {**RULE, "name": "a", "position": "1", "version": str(version)})
        assert page.status_code == 403, path
    assert store.revision() == before


def test_a_services_rules_stay_read_only(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    store.put(Listener.model_validate(
        {"name": "shop-cart-http", "load_balancer": "public", "protocol": "HTTP", "port": 8080,
         "target_port": "http", "owner": {"kind": "Service", "name": "shop/cart"},
         "routes": [{"name": "api", "path_prefix": "/api/"}, {"name": "rest"}]}
    ))  # fmt: skip
    auth.login("alice")
    detail = client.get("/listeners/shop-cart-http").get_data(as_text=True)
    assert 'data-route="api"' in detail
    assert "openslb.io/rules</code> annotation: read-only here" in detail
    assert "the listener's Service shop/cart" in detail
    for control in ('id="add-rule"', "drag-handle", "/rules/api/move", "/rules/", "rules.js"):
        assert control not in detail
    new = client.get("/listeners/shop-cart-http/rules/new", follow_redirects=True)
    assert "its rules change with the Service" in new.get_data(as_text=True)
    before = store.revision()
    version = str(store.get(Listener, "shop-cart-http").revision)
    for path in ("rules/new", "rules/api/edit", "rules/api/move", "rules/api/delete",
                 "rules/to-https"):  # fmt: skip
        page = auth.post(f"/listeners/shop-cart-http/{path}", {**RULE, "version": version})
        assert page.status_code == 302, path
        assert page.headers["Location"] == "/listeners/shop-cart-http#rules"
    assert store.revision() == before


def test_tcp_listeners_have_no_rules_page(
    client: FlaskClient, auth: Auth, ops: Operations, store: Store
) -> None:
    ops.add_listener(
        {"name": "db", "load_balancer": "public", "protocol": "TCP", "port": 5432,
         "selector": {"match_labels": {"app": "db"}}, "target_port": 5432}
    )  # fmt: skip
    auth.login("alice")
    assert "Forwarding rules" not in client.get("/listeners/db").get_data(as_text=True)
    page = client.get("/listeners/db/rules/new", follow_redirects=True)
    assert "only HTTP, HTTPS and GRPC listeners have rules" in page.get_data(as_text=True)
