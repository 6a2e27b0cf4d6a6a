"""Forwarding rules through a real Envoy (#17): every match and every action, with traffic.

One HTTP listener carries a rule per behaviour; the sample backends answer with their name
and echo what they received (`x-seen`), so each assertion reads what the client or the
backend actually saw.
"""

from __future__ import annotations

import collections
import itertools
import re
from typing import Any

import pytest

from devbed.l7harness import (
    Answer,
    BackendServer,
    Bed,
    host_stats,
    http_request,
    listener,
    load_balancer,
    service,
)
from devbed.process import wait_until
from l7.stats import (
    CLUSTERS_PATH,
    admin_reader,
    clusters_named,
    clusters_paths,
    parse_clusters,
    read_stats,
)
from slb.snapshot import Put
from slb.storage.store import Store


def to(app: str, weight: int = 1) -> dict[str, Any]:
    return {"selector": {"match_labels": {"app": app}}, "weight": weight}


RULES: list[dict[str, Any]] = [
    {"name": "to-https", "hosts": ["plain.shop.test"],
     "redirect": {"scheme": "https", "code": 301}},
    {"name": "moved", "path_prefix": "/old/",
     "redirect": {"host": "new.shop.test", "path_prefix": "/new/", "code": 308}},
    {"name": "renamed", "path_exact": "/a", "redirect": {"path": "/b"}},
    {"name": "down", "path_exact": "/maintenance",
     "fixed_response": {"status": 503, "body": "back soon\n"},
     "response_headers": {"set": [{"name": "retry-after", "value": "120"}]}},
    {"name": "posts", "path_exact": "/form", "method": "POST", "forward_to": [to("b")]},
    {"name": "beta", "path_regex": "/api/v[0-9]+/.*",
     "query_params": [{"name": "beta", "type": "regex", "value": "yes|1"}],
     "forward_to": [to("c")]},
    {"name": "canary", "headers": [{"name": "x-canary", "type": "present"}],
     "path_prefix": "/api/", "forward_to": [to("b")]},
    {"name": "tenant", "headers": [{"name": "x-tenant", "value": "gold"}],
     "forward_to": [to("c")]},
    {"name": "split", "path_prefix": "/split/", "forward_to": [to("b", 3), to("c", 1)]},
    {"name": "strip", "path_prefix": "/shop/",
     "rewrite": {"path_prefix": "/", "host": "backend.internal"},
     "request_headers": {"set": [{"name": "x-rule", "value": "strip"}],
                         "add": [{"name": "x-added", "value": "1"}], "remove": ["x-secret"]},
     "response_headers": {"set": [{"name": "x-served-by", "value": "openslb"}],
                          "remove": ["x-backend"]},
     "forward_to": [to("b")]},
    {"name": "retried", "path_prefix": "/fail-on/", "forward_to": [to("pair")],
     "retry": {"attempts": 2, "retry_on": ["5xx"]}},
    {"name": "unretried", "path_prefix": "/plain/", "rewrite": {"path_prefix": "/"},
     "forward_to": [to("pair")]},
    {"name": "named", "path_prefix": "/named/", "forward_to": [{"service": "tests/solo"}]},
    {"name": "segments", "path_segments": "/docs/", "forward_to": [to("b")]},
    {"name": "seg-strip", "path_segments": "/strip", "rewrite": {"path_prefix": "/"},
     "forward_to": [to("b")]},
    {"name": "seg-swap", "path_segments": "/swap", "rewrite": {"path_prefix": "/new"},
     "forward_to": [to("b")]},
    {"name": "root-under", "path_segments": "/", "hosts": ["root.shop.test"],
     "rewrite": {"path_prefix": "/under"}, "forward_to": [to("b")]},
    {"name": "whole", "path_exact": "/whole/one", "rewrite": {"path": "/replaced"},
     "forward_to": [to("b")]},
    {"name": "seg-moved", "path_segments": "/gone", "redirect": {"path_prefix": "/here/"}},
    {"name": "part-broken", "path_segments": "/part-broken", "forward_to": [to("b")],
     "unresolved_weight": 1},
    {"name": "mirrored", "path_segments": "/mirrored", "forward_to": [to("b")],
     "mirrors": [{"to": to("c")}, {"to": to("pair"), "percent": 50}]},
]  # fmt: skip


@pytest.fixture
def served(store: Store, bed: Bed) -> tuple[str, dict[str, BackendServer]]:
    servers = bed.backends(["a", "b", "c", "d"])
    a, b, c, d = servers
    vip = bed.net.address(7)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("a", [(a.address, a.http_port)], port_name="http")),
        Put(service("b", [(b.address, b.http_port)], port_name="http")),
        Put(service("c", [(c.address, c.http_port)], port_name="http")),
        Put(service("pair", [(x.address, x.http_port) for x in (c, d)], port_name="http")),
        Put(listener("web", "HTTP", 8080, app="a", target_port="http", routes=RULES,
                     health_check=None, scheduler="rr")),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: _get(vip, "/").status == 200, 30, "the listener answers")
    return vip, {s.name: s for s in servers}


def _get(vip: str, path: str, host: str = "www.shop.test", **kw: Any) -> Answer:
    return http_request(vip, 8080, host, path, **kw)


def test_redirects_keep_what_they_do_not_change(served: tuple[str, Any]) -> None:
    vip, _ = served
    to_https = _get(vip, "/cart?id=7", host="plain.shop.test:8080")
    assert (to_https.status, to_https.headers["location"]) == (
        301, "https://plain.shop.test/cart?id=7")  # fmt: skip
    moved = _get(vip, "/old/page?x=1")
    assert (moved.status, moved.headers["location"]) == (
        308, "http://new.shop.test:8080/new/page?x=1")  # fmt: skip
    renamed = _get(vip, "/a", host="www.shop.test:8080")
    assert (renamed.status, renamed.headers["location"]) == (302, "http://www.shop.test:8080/b")


def test_a_fixed_response_is_answered_by_the_load_balancer(served: tuple[str, Any]) -> None:
    vip, _ = served
    answer = _get(vip, "/maintenance")
    assert (answer.status, answer.body) == (503, "back soon\n")
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["retry-after"] == "120"
    assert "x-backend" not in answer.headers
    assert _get(vip, "/maintenance/more").body == "a"  # exact: nothing below it


def test_matches_on_method_path_regex_query_and_headers(served: tuple[str, Any]) -> None:
    vip, _ = served
    assert _get(vip, "/form", method="POST").body == "b"
    assert _get(vip, "/form").body == "a"  # GET: not the rule's method
    assert _get(vip, "/api/v2/items?beta=yes").body == "c"
    assert _get(vip, "/api/v2/items?beta=no").body == "a"
    assert _get(vip, "/api/vx/items?beta=1").body == "a"  # the regex is anchored, whole path
    assert _get(vip, "/api/x", headers={"x-canary": ""}).body == "b"  # present, even empty
    assert _get(vip, "/api/x").body == "a"
    assert _get(vip, "/", headers={"X-Tenant": "gold"}).body == "c"
    assert _get(vip, "/", headers={"x-tenant": "silver"}).body == "a"
    # Whole segments: /docs and below, never /docsx.
    assert [_get(vip, p).body for p in ("/docs", "/docs/", "/docs/v1?x=1", "/docsx")] == [
        "b", "b", "b", "a"]  # fmt: skip


def test_a_weighted_split_sends_each_target_its_share(served: tuple[str, Any]) -> None:
    vip, _ = served
    counts = collections.Counter(_get(vip, f"/split/{i}").body for i in range(400))
    assert set(counts) == {"b", "c"}
    # 3:1 over 400 requests: 300 expected; 240-360 is over 6 standard deviations wide.
    assert 240 <= counts["b"] <= 360, counts


def test_a_rule_naming_a_service_reaches_it_once_it_is_exposed(
    served: tuple[str, dict[str, BackendServer]], store: Store
) -> None:
    """`tests/solo` carries no label any selector here picks: only its name leads to it."""
    vip, servers = served
    assert _get(vip, "/named/x").status == 503  # not exposed yet: no backend
    d = servers["d"]
    solo = service("solo", [(d.address, d.http_port)], port_name="http")
    store.apply([Put(solo.model_copy(update={"labels": {}}))])
    wait_until(lambda: _get(vip, "/named/x").body == "d", 15, "the named Service answers")
    assert {_get(vip, f"/named/{i}").body for i in range(20)} == {"d"}
    assert _get(vip, "/").body == "a"  # the listener's own selector picks what it picked


def test_rewrites_and_header_changes_reach_the_backend_and_the_client(
    served: tuple[str, Any],
) -> None:
    vip, _ = served
    answer = _get(vip, "/shop/cart/1", headers={"x-secret": "s3", "x-rule": "client"})
    assert answer.body == "b"
    assert answer.seen_path == "/cart/1"
    seen = answer.seen_headers
    assert ("host", "backend.internal") in seen
    assert [v for k, v in seen if k == "x-rule"] == ["strip"]
    assert ("x-added", "1") in seen
    assert "x-secret" not in dict(seen)
    assert answer.headers["x-served-by"] == "openslb"
    assert "x-backend" not in answer.headers


def test_a_rules_retry_policy_retries_5xx_on_another_backend(served: tuple[str, Any]) -> None:
    vip, _ = served
    # c answers /fail-on/c with 503 and d answers 200: retried, every request succeeds on d.
    answers = [_get(vip, "/fail-on/c") for _ in range(20)]
    assert {(a.status, a.body) for a in answers} == {(200, "d")}
    # The same backends by a rule without its own policy: the listener's default retries
    # only requests that never reached a backend, so c's 503s reach the client.
    plain = collections.Counter(_get(vip, "/plain/fail-on/c").status for _ in range(20))
    assert min(plain[503], plain[200]) >= 5, plain


def test_envoy_stats_reads_every_route_cluster_a_few_at_a_time(
    served: tuple[str, Any], bed: Bed
) -> None:
    """`slb envoy-stats` asks /clusters for the clusters /stats names, two by two here:
    together the reads hold every host the whole page holds, routes' clusters (named
    `listener/route`) included. A route's cluster that never had a host is not named
    (/stats is read `usedonly`): it has no host to read."""
    envoy = bed.envoys[0]
    read = admin_reader(f"127.0.0.1:{envoy.admin_port}")
    names = clusters_named(read_stats(read))
    assert {"web", "web/posts", "web/split"} <= set(names)
    assert "web/named" not in names
    assert any(line.startswith("web/named::") for line in read(CLUSTERS_PATH))  # yet Envoy has it
    paths = clusters_paths(names, per_read=2)
    assert len(paths) >= len(names) // 2 > 3
    sliced = parse_clusters(itertools.chain.from_iterable(read(p) for p in paths))
    whole = parse_clusters(read(CLUSTERS_PATH))
    assert sliced == whole
    assert whole.listeners == {"web"}
    assert len(whole.states["web"]) == 4  # a, b, c and d, each a host of some cluster
    # The bootstrap keeps what is charted and alerted on, not Envoy's other statistics.
    kept = envoy.stats(r"^cluster\.web\.")
    assert "cluster.web.upstream_cx_total" in kept
    assert not [k for k in kept if re.search(r"\.(upstream_cx_destroy|lb_subsets_active)$", k)]


def test_path_rewrites_replace_whole_segments_or_the_whole_path_and_keep_the_query(
    served: tuple[str, Any],
) -> None:
    vip, _ = served
    seen = {
        path: _get(vip, path, host=host).seen_path
        for path, host in [
            ("/strip/x/y?q=1", "www.shop.test"), ("/strip", "www.shop.test"),
            ("/strip/", "www.shop.test"), ("/swap/x", "www.shop.test"),
            ("/swap", "www.shop.test"), ("/b/c?d=1", "root.shop.test"),
            ("/whole/one?q=2", "www.shop.test"),
        ]
    }  # fmt: skip
    assert seen == {
        "/strip/x/y?q=1": "/x/y?q=1", "/strip": "/", "/strip/": "/", "/swap/x": "/new/x",
        "/swap": "/new", "/b/c?d=1": "/under/b/c?d=1", "/whole/one?q=2": "/replaced?q=2",
    }  # fmt: skip
    moved = _get(vip, "/gone/a?x=1")
    assert (moved.status, moved.headers["location"]) == (
        302, "http://www.shop.test:8080/here/a?x=1")  # fmt: skip


def test_a_mirror_gets_a_copy_of_its_share_of_requests_and_the_client_the_targets_answer(
    served: tuple[str, Any], bed: Bed
) -> None:
    vip, _ = served
    envoy = bed.envoys[0]
    answers = collections.Counter(_get(vip, f"/mirrored/{i}").body.strip() for i in range(40))
    assert answers == {"b": 40}  # the mirrors' answers are dropped

    def copies(cluster: str) -> int:
        return sum(host_stats(envoy, cluster, "rq_total").values())

    wait_until(lambda: copies("web/mirrored/m0") == 40, 10, "every request copied to c")
    halved = copies("web/mirrored/m1")
    assert 5 <= halved <= 35  # about half (a fixed seed is not Envoy's to give)


def test_a_rules_unresolved_share_is_answered_500(served: tuple[str, Any]) -> None:
    vip, _ = served
    answers = collections.Counter(_get(vip, f"/part-broken/{i}").status for i in range(60))
    assert set(answers) == {200, 500}
    assert 10 <= answers[500] <= 50  # about half: weights 1 and 1
