"""Pages, login, sessions, CSRF and the rate limit, through the Flask test client."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from devbed.pki import chain
from devbed.redis import RedisServer
from slb.cli import main
from slb.model import Listener, LoadBalancer, Service
from slb.operations import Operations
from slb.storage.audit import AuditLog
from slb.storage.status import ControllerBeat, StatusBoard
from slb.storage.store import Store
from tests.web.conftest import PASSWORD, Auth, csrf_of, make_app

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
    assert "Routes <span" in detail
    api = detail.split('data-route="api"')[1].split("</tr>")[0]
    for shown in ("shop.example", "path prefix <code>/api</code>", "app=api", "port 8080", "5 s"):
        assert shown in api
    rest = detail.split('data-route="rest"')[1].split("</tr>")[0]
    assert "forward to the listener's Services" in rest
    version = store.get(Listener, "web").revision
    saved = auth.post("/listeners/web/edit", {**FORM, "scheduler": "wrr", "version": str(version)})
    assert saved.status_code == 302
    assert [r.name for r in store.get(Listener, "web").obj.routes] == ["api", "rest"]


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
