"""Operators' writes (Python API and `slb`): validated, conflict-checked, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from devbed.pki import self_signed
from devbed.redis import RedisServer
from slb.cli import main
from slb.model import Listener, LoadBalancer, ModelError, NodeGroup, Owner, OwnerKind
from slb.operations import Operations
from slb.storage.store import Store

LISTENER = {
    "name": "web", "load_balancer": "public", "protocol": "GRPC", "port": 443,
    "selector": {"match_labels": {"app": "cart"}}, "target_port": "grpc",
}  # fmt: skip


@pytest.fixture
def ops(store: Store) -> Operations:
    ops = Operations(store, actor="alice")
    ops.put_pool({"name": "default", "cidrs": ["198.18.0.0/24"]})
    ops.add_load_balancer({"name": "public", "vip": "198.18.0.10"})
    return ops


def test_listeners_are_validated_and_checked_for_conflicts(ops: Operations) -> None:
    created = ops.add_listener(LISTENER)
    assert created.obj.owner == Owner(kind=OwnerKind.OPERATOR, name="alice")
    with pytest.raises(ModelError) as taken:
        ops.add_listener({**LISTENER, "name": "web2", "protocol": "TCP"})
    assert [e.field for e in taken.value.errors] == ["port"]
    assert "198.18.0.10:443/TCP is taken by listener 'web'" in str(taken.value)
    ops.add_listener({**LISTENER, "name": "dns", "protocol": "UDP", "health_check": None})
    with pytest.raises(ModelError) as missing:
        ops.add_listener({**LISTENER, "name": "x", "port": 80, "load_balancer": "nosuch"})
    assert [e.field for e in missing.value.errors] == ["load_balancer"]
    with pytest.raises(ModelError) as bad:
        ops.add_listener({**LISTENER, "name": "y", "port": 0})
    assert [e.field for e in bad.value.errors] == ["port"]
    assert sorted(v.listener.name for v in ops.listeners()) == ["dns", "web"]


def test_updates_keep_owner_and_age_and_removal_is_guarded(ops: Operations, store: Store) -> None:
    created = ops.add_listener(LISTENER)
    updated = ops.update_listener("web", {"scheduler": "lc"})
    assert updated.obj.scheduler.value == "lc"
    assert updated.obj.created_at == created.obj.created_at
    with pytest.raises(ModelError, match="still has listeners: web"):
        ops.remove_load_balancer("public")
    ops.remove_listener("web")
    ops.remove_load_balancer("public")
    with pytest.raises(ModelError, match="no address pool"):
        ops.add_load_balancer({"name": "p2", "pool": "nosuch"})


def test_objects_made_from_a_gateway_are_read_only(ops: Operations, store: Store) -> None:
    owned = Listener.model_validate(
        {**LISTENER, "name": "gw-web", "port": 446, "selector": None,
         "owner": {"kind": "Gateway", "name": "shop/edge"}}
    )  # fmt: skip
    store.put(owned)
    with pytest.raises(ModelError, match="belongs to Gateway shop/edge: change the Gateway"):
        ops.update_listener("gw-web", {"port": 447})
    with pytest.raises(ModelError, match="belongs to Gateway shop/edge"):
        ops.remove_listener("gw-web")


def test_objects_made_from_a_service_are_read_only(ops: Operations, store: Store) -> None:
    owned = Listener.model_validate(
        {**LISTENER, "name": "svc-web", "port": 444, "selector": None,
         "owner": {"kind": "Service", "name": "shop/cart"}}
    )  # fmt: skip
    store.put(owned)
    with pytest.raises(ModelError, match="belongs to Service shop/cart"):
        ops.remove_listener("svc-web")
    with pytest.raises(ModelError, match="belongs to Service shop/cart"):
        ops.update_listener("svc-web", {"port": 445})


def test_every_write_is_audited(ops: Operations) -> None:
    ops.add_listener(LISTENER)
    ops.update_listener("web", {"scheduler": "lc"})
    ops.remove_listener("web")
    trail = ops.audit.entries(kind="Listener")
    assert [(e.action, e.who) for e in trail] == [
        ("delete", "alice"), ("update", "alice"), ("create", "alice"),
    ]  # fmt: skip
    delete, update, create = trail
    assert create.before is None
    assert create.after is not None
    assert update.before is not None
    assert update.before["scheduler"] == "rr"
    assert update.after is not None
    assert update.after["scheduler"] == "lc"
    assert delete.after is None
    assert delete.revision > update.revision > create.revision


def test_the_slb_command(redis_server: RedisServer, store: Store, tmp_path: Path) -> None:
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": ""}  # fmt: skip
    runner = CliRunner()

    def slb(*argv: str) -> tuple[int, str]:
        result = runner.invoke(main, list(argv), env=env)
        return result.exit_code, result.output

    assert slb("pool", "set", "default", "198.18.0.0/24")[0] == 0
    assert slb("lb", "add", "public", "--vip", "198.18.0.10", "--allow", "shop")[0] == 0
    public = store.get(LoadBalancer, "public")
    assert public is not None
    assert (public.obj.namespace, public.obj.allowed_namespaces) == (None, ("shop",))
    code, out = slb("listener", "add", "web", "--lb", "public", "--protocol", "GRPC",
                    "--port", "443", "--selector", "app=cart,env in (prod)", "--target-port",
                    "grpc", "--health-check", "grpc", "--hc-interval", "5")  # fmt: skip
    assert code == 0, out
    code, out = slb("listener", "add", "bad", "--lb", "public", "--protocol", "TCP",
                    "--port", "70000", "--selector", "app=x", "--target-port", "80")  # fmt: skip
    assert code == 1
    assert "Listener port:" in out
    code, out = slb("listener", "set", "web", "--allow", "198.18.10.0/24", "--allow",
                    "2001:db8::/32", "--deny", "198.18.10.66/32")  # fmt: skip
    assert code == 0, out
    code, out = slb("listener", "set", "web", "--allow", "198.18.10.1/24")
    assert (
        code,
        "allowed_sources.0: '198.18.10.1/24' has host bits set: the network is 198.18.10.0/24"
        in out,
    ) == (1, True), out
    code, out = slb("listener", "show", "web")
    assert code == 0
    shown = json.loads(out)
    assert (shown["allowed_sources"], shown["denied_sources"]) == (
        ["198.18.10.0/24", "2001:db8::/32"], ["198.18.10.66/32"])  # fmt: skip
    assert slb("listener", "set", "web", "--allow", "any", "--requests-per-second", "50")[0] == 0
    assert store.get(Listener, "web").obj.limits.requests_per_second == 50
    assert slb("listener", "set", "web", "--requests-per-second", "0")[0] == 0
    ca = tmp_path / "backend-ca.pem"
    ca.write_text(self_signed("cart.backend.test").chain_pem)
    code, out = slb("listener", "set", "web", "--backend-protocol", "tls", "--backend-ca",
                    str(ca), "--backend-sni", "cart.backend.test")  # fmt: skip
    assert code == 0, out
    backend_tls = store.get(Listener, "web").obj.backend_tls
    assert (backend_tls.sni, backend_tls.ca_pem) == ("cart.backend.test", ca.read_text())
    code, out = slb("listener", "set", "web", "--tls-policy", "tls13")
    assert (code, "tls_policy: only HTTPS and TLS listeners terminate TLS" in out) == (1, True), out
    assert store.get(Listener, "web").obj.limits.requests_per_second is None
    assert store.get(Listener, "web").obj.allowed_sources == ()
    code, out = slb("listener", "show", "web")
    assert code == 0
    assert '"interval_s": 5' in out
    assert '"operator": "In"' in out
    code, out = slb("listener", "list")
    assert "web" in out
    assert "Operator:cli:" in out
    assert slb("lb", "rm", "public")[0] == 1
    assert slb("listener", "rm", "web")[0] == 0
    assert slb("lb", "rm", "public")[0] == 0


def test_slb_lb_add_takes_a_namespace_selector_and_holds_namespaces_to_their_quota(
    redis_server: RedisServer, store: Store
) -> None:
    """`--allow-selector` in `kubectl -l` form, a bad one named; and instances made for a
    namespace count against `cmi.instances_per_namespace`, as its Services' own do (#14)."""
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": "", "OPENSLB_CMI_INSTANCES_PER_NAMESPACE": "1"}  # fmt: skip

    def slb(*argv: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["lb", "add", *argv], env=env)
        return result.exit_code, result.output

    assert (
        CliRunner().invoke(main, ["pool", "set", "default", "198.18.0.0/24"], env=env).exit_code
        == 0
    )
    code, out = slb("teams", "--pool", "default", "--allow-selector", "team=retail,env in (prod)")
    assert code == 0, out
    teams = store.get(LoadBalancer, "teams")
    assert teams is not None
    assert teams.obj.admits("shop", {"team": "retail", "env": "prod"})
    assert not teams.obj.admits("shop", {"team": "retail", "env": "dev"})
    code, out = slb("bad", "--pool", "default", "--allow-selector", "team in (retail")
    assert code == 1
    assert "LoadBalancer allowed_namespace_selector:" in out
    assert slb("shop-a", "--pool", "default", "--namespace", "shop")[0] == 0
    code, out = slb("shop-b", "--pool", "default", "--namespace", "shop")
    assert code == 1
    assert "LoadBalancer namespace: namespace shop has 1 instances already" in out
    assert "cmi.instances_per_namespace" in out
    assert store.get(LoadBalancer, "shop-b") is None
    assert slb("web-a", "--pool", "default", "--namespace", "web")[0] == 0  # another tenant
    assert slb("shared", "--pool", "default")[0] == 0  # the cluster's: no tenant's quota


def test_a_node_group_can_have_its_envoys_checked(redis_server: RedisServer, store: Store) -> None:
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": ""}  # fmt: skip
    runner = CliRunner()
    argv = ["node-group", "set", "edge", "lb1=198.18.0.1", "lb2=198.18.0.2"]
    result = runner.invoke(main, [*argv, "--envoy-ready-port", "9902"], env=env)
    assert result.exit_code == 0, result.output
    stored = store.get(NodeGroup, "edge")
    assert stored is not None
    check = stored.obj.envoy_check
    assert check is not None
    assert (check.type.value, check.path, check.port) == ("http", "/ready", 9902)
    result = runner.invoke(main, [*argv, "--envoy-ready-port", "70000"], env=env)
    assert result.exit_code == 1
    assert "envoy_check.port" in result.output
    again = store.get(NodeGroup, "edge")
    assert again is not None
    assert again.obj.envoy_check == check  # nothing half-applied


def test_rules_are_added_replaced_moved_and_removed_in_order(ops: Operations) -> None:
    ops.add_listener({**LISTENER, "protocol": "HTTP", "port": 80, "health_check": None})
    ops.put_rule("web", {"name": "api", "path_prefix": "/api/"})
    ops.put_rule("web", {"name": "to-https", "redirect": {"scheme": "https"}}, position=0)
    ops.put_rule("web", {"name": "static", "path_prefix": "/static/"})
    stored = ops.put_rule("web", {"name": "api", "path_prefix": "/v1/"})  # replaced in place
    assert [(r.name, r.path_prefix) for r in stored.obj.routes] == [
        ("to-https", None), ("api", "/v1/"), ("static", "/static/")]  # fmt: skip
    stored = ops.move_rule("web", "static", 0)
    assert [r.name for r in stored.obj.routes] == ["static", "to-https", "api"]
    with pytest.raises(ModelError, match="position 4 is not between 0 and 2"):
        ops.move_rule("web", "static", 4)
    with pytest.raises(ModelError, match=r"routes\.3\.path_regex: .* not an RE2"):
        ops.put_rule("web", {"name": "bad", "path_regex": "(a)\\1"})
    stored = ops.remove_rule("web", "to-https")
    assert [r.name for r in stored.obj.routes] == ["static", "api"]
    with pytest.raises(ModelError, match="no rule named 'gone'"):
        ops.remove_rule("web", "gone")
    assert [e.action for e in ops.audit.entries(10)].count("update") == 6


def test_the_slb_listener_rule_commands(redis_server: RedisServer, store: Store) -> None:
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": ""}  # fmt: skip

    def slb(*argv: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(argv), env=env)
        return result.exit_code, result.output

    ops = Operations(store, actor="alice")
    ops.put_pool({"name": "default", "cidrs": ["198.18.0.0/24"]})
    ops.add_load_balancer({"name": "public", "vip": "198.18.0.10"})
    ops.add_listener({**LISTENER, "protocol": "HTTP", "port": 80, "health_check": None})
    code, out = slb("listener", "rule", "add", "web", "canary", "--path-prefix", "/api/",
                    "--header", "x-canary", "--header", "x-tier~gold|silver", "--query", "v=2",
                    "--to", "app=api", "--to", "listener", "--to", "service shop/cart",
                    "--weights", "90,10,5",
                    "--rewrite-prefix", "/", "--set-header", "x-rule=canary",
                    "--remove-response-header", "server", "--retries", "1",
                    "--retry-on", "5xx,reset")  # fmt: skip
    assert (code, out.split(",")[0]) == (0, "rule canary is #1 of listener web"), out
    code, out = slb("listener", "rule", "add", "web", "to-https", "--https-redirect",
                    "--position", "0")  # fmt: skip
    assert code == 0, out
    code, out = slb("listener", "rule", "add", "web", "down", "--path-exact", "/maintenance",
                    "--respond", "503", "--body", "back soon")  # fmt: skip
    assert code == 0, out
    rules = store.get(Listener, "web").obj.routes
    assert [r.name for r in rules] == ["to-https", "canary", "down"]
    to_https, canary, down = rules
    assert (to_https.redirect.scheme, to_https.redirect.code) == ("https", 301)
    assert [(h.name, h.type, h.value) for h in canary.headers] == [
        ("x-canary", "present", ""), ("x-tier", "regex", "gold|silver")]  # fmt: skip
    assert [(str(t), t.weight) for t in canary.forward_to] == [
        ("app=api", 90), ("listener", 10), ("service shop/cart", 5)]  # fmt: skip
    assert (canary.rewrite.path_prefix, canary.retry.retry_on) == ("/", ("5xx", "reset"))
    assert (down.fixed_response.status, down.fixed_response.body) == (503, "back soon")
    code, out = slb("listener", "rule", "list", "web")
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["to-https", "canary", "down"]
    code, out = slb("listener", "rule", "add", "web", "bad", "--to", "app=a", "--weights", "1,2")
    assert (code, "one weight per --to" in out) == (2, True)
    code, out = slb("listener", "rule", "add", "web", "bad", "--header", "x-a~(")
    assert (code, "routes.3.headers.0.value" in out) == (1, True)
    code, out = slb("listener", "rule", "move", "web", "down", "0")
    assert (code, out.split(" (")[0]) == (0, "rules of listener web: down, to-https, canary")
    assert slb("listener", "rule", "rm", "web", "canary")[0] == 0
    assert slb("listener", "rule", "rm", "web", "canary")[0] == 1
    code, out = slb("listener", "rule", "add", "web", "docs", "--path-segments", "/docs/")
    assert code == 0, out
    assert store.get(Listener, "web").obj.routes[-1].path_segments == "/docs"
    code, out = slb("listener", "rule", "add", "web", "calls", "--grpc-only",
                    "--grpc-service", "shop.v1.Cart", "--backend-protocol", "tls")  # fmt: skip
    assert code == 0, out
    calls = store.get(Listener, "web").obj.routes[-1]
    assert (calls.grpc_only, calls.grpc_service, calls.backend_protocol) == (
        True, "shop.v1.Cart", "tls")  # fmt: skip
    code, out = slb("listener", "rule", "add", "web", "page", "--path-exact", "/old",
                    "--rewrite-path", "/new")  # fmt: skip
    assert code == 0, out
    assert store.get(Listener, "web").obj.routes[-1].rewrite.path == "/new"
