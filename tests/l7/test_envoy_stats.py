"""`slb envoy-stats` on a real Envoy programmed by `slb xds`: real gRPC traffic, sampled,
read back from the console's REST API; Envoy's view of a stopped backend (#17)."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import argon2
import pytest
from flask.testing import FlaskClient

from devbed.envoy import EnvoyProxy
from devbed.l7harness import (
    SLB,
    BackendServer,
    Bed,
    background_load,
    balance,
    listener,
    load_balancer,
    service,
    wait_for_answer,
)
from devbed.process import wait_until
from devbed.redis import RedisServer
from l7.stats import (
    CLUSTERS_PATH,
    MAX_DUTY,
    MAX_INTERVAL_S,
    EnvoyStats,
    Hosts,
    Sampler,
    admin_reader,
    clusters_named,
    clusters_paths,
    listeners_named,
    parse_clusters,
    parse_stats,
    pause_after,
    worth_telling,
)
from slb.snapshot import Put
from slb.storage.envoyhosts import DEFAULT_MAX_AGE_S, EnvoyHosts
from slb.storage.store import Store
from slb.storage.timeseries import CONNECTIONS, RESPONSES_5XX_PER_SECOND, TimeSeries
from tests.web.conftest import CHEAP_HASH, PASSWORD, Auth, make_app
from web.auth import Accounts, Role

FAST = {"interval_s": 1, "timeout_s": 1, "healthy_threshold": 2, "unhealthy_threshold": 2}


def console(redis_server: RedisServer, store: Store, tmp_path: Path) -> tuple[FlaskClient, Auth]:
    """The console on the bed's store, signed in as a viewer."""
    accounts = Accounts(store, argon2.PasswordHasher(**CHEAP_HASH))
    accounts.create_user("victor", PASSWORD, Role.VIEWER)
    client = make_app(redis_server, store, tmp_path).test_client()
    auth = Auth(client)
    assert auth.login("victor").status_code == 302
    return client, auth


def echo_listener(
    store: Store, bed: Bed, host: int, names: list[str], node: str = "n1", **extra: Any
) -> tuple[str, list[BackendServer], EnvoyProxy]:
    """gRPC backends behind GRPC listener `echo` on 198.19.N.host:50051, served by an Envoy
    programmed by `slb xds`; returns once the listener answers."""
    backends = bed.backends(names)
    vip = bed.net.address(host)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in backends])),
        Put(listener("echo", "GRPC", 50051, **extra)),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy(node)
    target = f"{vip}:50051"
    wait_for_answer(target)
    return target, backends, envoy


def sampler(store: Store, envoy: EnvoyProxy, node: str = "n1") -> EnvoyStats:
    return EnvoyStats(store, node, admin_reader(f"127.0.0.1:{envoy.admin_port}"))


def test_grpc_traffic_reaches_the_console_charts(
    store: Store, bed: Bed, redis_server: RedisServer, tmp_path: Path
) -> None:
    target, backends, envoy = echo_listener(store, bed, 21, ["b1", "b2", "b3"])
    stats = sampler(store, envoy)
    first = stats.once()
    assert {s for s, _, _ in first.points} >= {CONNECTIONS, "backend_connections"}  # no rates yet
    with background_load(target, connections=4) as result:
        time.sleep(6)  # past Envoy's 5 s stats flush, so the latency quantiles are filled
        stats.once()
    assert result.failed == 0
    assert result.ok > 0

    client, _ = console(redis_server, store, tmp_path)
    metrics = client.get("/api/v1/listeners/echo/metrics?window=120&step=1")
    assert metrics.status_code == 200
    body = metrics.get_json()
    latest = {name: points[-1]["value"] for name, points in body["series"].items() if points}
    for name in ("requests_per_second", "responses_2xx_per_second", "new_connections_per_second",
                 "bytes_in_per_second", "bytes_out_per_second", "bytes_per_second",
                 "connections"):  # fmt: skip
        assert latest.get(name, 0) > 0, (name, latest)
    # Envoy times upstream requests in whole milliseconds: a local call's median may be 0.
    assert latest.get("upstream_p50_ms", -1) >= 0, latest
    slowest = max(p["value"] for p in body["series"].get("upstream_p99_ms", []))
    assert slowest > 0, latest
    assert latest["connections"] >= 4  # the load generator's connections, open while sampled
    assert "responses_5xx_per_second" in latest  # sampled, and zero
    assert latest["responses_5xx_per_second"] == 0
    assert latest["upstream_p99_ms"] >= latest["upstream_p50_ms"]
    per_backend = body["backends"]
    assert set(per_backend) == {b.grpc_target for b in backends}
    for host, series in per_backend.items():
        assert series["backend_requests_per_second"][-1]["value"] > 0, host
        assert series["backend_connections"][-1]["value"] >= 1, host
    rows = client.get("/api/v1/listeners/echo/backends").get_json()["items"]
    assert {f"{r['address']}:{r['port']}": r["envoy"] for r in rows} == {
        b.grpc_target: {"n1": "healthy"} for b in backends
    }


def test_envoy_health_shows_a_stopped_backend_failing_and_ejected(
    store: Store, bed: Bed, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Active checks mark it failing; without checks, outlier detection ejects it."""
    b1, b2, b3 = bed.backends(["b1", "b2", "b3"])
    vip = bed.net.address(22)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in (b1, b2, b3)])),
        Put(listener("checked", "GRPC", 50051, app="echo", health_check={"type": "tcp", **FAST})),
        Put(listener("unchecked", "GRPC", 50052, app="echo")),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    wait_for_answer(f"{vip}:50052")
    stats = sampler(store, envoy)
    hosts = EnvoyHosts(store)
    all_hosts = {b.grpc_target for b in (b1, b2, b3)}

    def states(name: str) -> dict[str, str]:
        stats.once()
        return {h: n["n1"] for h, n in hosts.of_listener(name, ["n1"], time.time()).items()}

    wait_until(lambda: states("checked") == dict.fromkeys(all_hosts, "healthy"), 20, "checked")
    assert states("unchecked") == dict.fromkeys(all_hosts, "healthy")

    b3.stop(timeout=5)
    wait_until(lambda: states("checked")[b3.grpc_target] == "failing", 20, "b3 failing")

    def ejected() -> bool:
        balance(f"{vip}:50052", 30)  # calls to b3 fail to connect, are retried elsewhere
        return states("unchecked")[b3.grpc_target] == "ejected"

    wait_until(ejected, 30, "b3 ejected by outlier detection")
    final = states("unchecked")
    assert {h: s for h, s in final.items() if h != b3.grpc_target} == dict.fromkeys(
        {b1.grpc_target, b2.grpc_target}, "healthy"
    )

    client, _ = console(redis_server, store, tmp_path)
    rows = client.get("/api/v1/listeners/checked/backends").get_json()["items"]
    by_host = {f"{r['address']}:{r['port']}": (r["health"], r["envoy"]) for r in rows}
    # Kubernetes still calls it ready: only the load balancer's own check sees it down.
    assert by_host[b3.grpc_target] == ("ready", {"n1": "failing"})
    page = client.get("/listeners/checked").get_data(as_text=True)
    assert f'<tr data-backend="{b3.grpc_target}">' in page
    row = page.split(f'<tr data-backend="{b3.grpc_target}">')[1].split("</tr>")[0]
    assert 'data-node="n1" data-state="failing"' in row


def test_rates_come_from_two_samples_and_a_restart_gives_none() -> None:
    def stats(rq: int) -> dict[str, Any]:
        return {"stats": [{"name": "http.web.downstream_rq_total", "value": rq}]}

    hosts = parse_clusters(["web::added_via_api::true\n"])
    sampler_ = Sampler("n1")
    assert not [p for p in sampler_.sample(10.0, stats(100), hosts).points if "second" in p[0]]
    rates = {p[0]: p[2] for p in sampler_.sample(15.0, stats(150), hosts).points}
    assert rates["requests_per_second"] == 10.0
    after_restart = {p[0] for p in sampler_.sample(20.0, stats(3), hosts).points}
    assert "requests_per_second" not in after_restart
    # The bootstrap's own clusters (not sent over xDS) name no listener, nor do Envoy's
    # own connection managers (its admin's, the bootstrap's stats listener's).
    xds = parse_clusters(["xds::added_via_api::false\n"])
    own = {"stats": [{"name": f"http.{n}.downstream_rq_total", "value": 5}
                     for n in ("admin", "openslb-stats")]}  # fmt: skip
    assert Sampler("n1").sample(1.0, own, xds).points == []


def test_a_listener_is_charted_by_its_traffic_when_no_cluster_names_it() -> None:
    """/stats is read `usedonly` (#18: cheaper for Envoy's main thread), so a cluster that
    never had a host is not named: a listener whose clusters have none is still charted
    once its connection manager has statistics, and one with neither is not."""

    def doc(scale: int) -> dict[str, Any]:
        return {"stats": [
            {"name": "http.empty.downstream_cx_active", "value": 2 * scale},
            {"name": "http.empty.downstream_rq_total", "value": 40 * scale},
            {"name": "http.empty.downstream_rq_5xx", "value": 40 * scale},
        ]}  # fmt: skip

    assert listeners_named(parse_stats(doc(1))[0]) == {"empty"}
    sampler_ = Sampler("n1")
    sampler_.sample(10.0, doc(1), Hosts())
    points = {(p[0], p[1]["listener"]): p[2] for p in sampler_.sample(20.0, doc(2), Hosts()).points}
    assert points[(CONNECTIONS, "empty")] == 4
    assert points[(RESPONSES_5XX_PER_SECOND, "empty")] == 4.0
    assert Sampler("n1").sample(1.0, {"stats": []}, Hosts()).points == []


CLUSTERS_PAGE = """\
xds::default_priority::max_connections::1024
xds::added_via_api::false
xds::198.18.0.9:18000::cx_active::1
xds::198.18.0.9:18000::health_flags::healthy
web::outlier::success_rate_average::-1
web::default_priority::max_connections::1024
web::added_via_api::true
web::198.18.1.1:8080::cx_active::2
web::198.18.1.1:8080::rq_total::40
web::198.18.1.1:8080::rq_error::1
web::198.18.1.1:8080::health_flags::healthy
web::198.18.1.1:8080::hostname::
web::198.18.1.2:8080::cx_active::0
web::198.18.1.2:8080::rq_total::7
web::198.18.1.2:8080::health_flags::/failed_active_hc/active_hc_timeout
web::[2001:db8::1]:8080::rq_total::3
web::[2001:db8::1]:8080::health_flags::/degraded_eds_health
web/api::added_via_api::true
web/api::198.18.1.1:8080::rq_total::10
web/api::198.18.1.1:8080::health_flags::/failed_outlier_check
web/api::198.18.1.3:8080::health_flags::/pending_active_hc
"""


def test_the_clusters_page_folds_into_hosts_per_listener() -> None:
    """Envoy's text /clusters: a route's cluster (`web/api`) counts for its listener, the
    gravest state of a host wins, IPv6 hosts lose their brackets as the console names them,
    and the bootstrap's own cluster is left out."""
    hosts = parse_clusters(CLUSTERS_PAGE.splitlines(keepends=True))
    assert hosts.listeners == {"web"}
    assert hosts.states == {"web": {
        "198.18.1.1:8080": "ejected", "198.18.1.2:8080": "failing",
        "2001:db8::1:8080": "degraded", "198.18.1.3:8080": "pending",
    }}  # fmt: skip
    assert hosts.counters[("web", "198.18.1.1:8080")] == {
        "cx_active": 2.0, "rq_total": 50.0, "rq_error": 1.0,
    }  # fmt: skip
    assert hosts.counters[("web", "2001:db8::1:8080")]["rq_total"] == 3.0


def test_clusters_are_asked_for_by_name_a_few_at_a_time() -> None:
    """/stats names the clusters (their `membership_total`); each /clusters read asks for
    a few by a filter that matches whole names only, whatever characters they hold."""
    doc = {"stats": [
        {"name": "cluster.web.membership_total", "value": 3},
        {"name": "cluster.web/api.membership_total", "value": 0},  # its hosts all gone
        {"name": "cluster.web.upstream_cx_total", "value": 9},
        {"name": "http.web.downstream_rq_total", "value": 1},
        {"histograms": {"supported_quantiles": [50], "computed_quantiles": []}},
    ]}  # fmt: skip
    assert clusters_named(doc) == ["web", "web/api"]
    names = ["a.b", "a+b", "web", "web/api", "x(y)", "we"]
    paths = clusters_paths(names, per_read=4)
    assert len(paths) == 2
    filters = [urllib.parse.unquote(p.split("filter=", 1)[1]) for p in paths]
    assert all(p.startswith(CLUSTERS_PATH + "?filter=") for p in paths)
    # Envoy's RE2 reads these escapes as Python's re does.
    matched = [n for n in [*names, "axb", "web/ap", "wen", "xy", "web/api/x"]
               if sum(bool(re.search(f, n)) for f in filters) == 1]  # fmt: skip
    assert matched == names
    assert clusters_paths([]) == []


def test_slow_samples_are_taken_further_apart_but_never_too_far() -> None:
    """At 10,000 listeners a sample takes seconds of Envoy's main thread (which applies xDS
    too): sampling keeps to `MAX_DUTY` of the time, yet samples often enough that the
    hosts' view does not go stale."""
    assert pause_after(5.0, 0.2) == pytest.approx(4.8)  # cheap: every 5 s
    assert pause_after(5.0, 1.0) == pytest.approx(1.0 / MAX_DUTY - 1.0)
    assert pause_after(5.0, 4.0) == pytest.approx(MAX_INTERVAL_S - 4.0)  # capped
    assert pause_after(5.0, 40.0) == 0.0
    assert pause_after(60.0, 1.0) == pytest.approx(59.0)  # an operator's longer interval stays
    assert MAX_INTERVAL_S < DEFAULT_MAX_AGE_S


def test_a_changing_period_is_told_when_it_leaves_the_interval_or_halves_or_doubles() -> None:
    """At 10,000 listeners the sampler slows down as the listeners come: each doubling is
    logged with its steps' times, not only the first slow sample."""
    assert worth_telling(5.0, 8.0, 5.0)  # slowed down
    assert not worth_telling(8.0, 12.0, 5.0)
    assert worth_telling(8.0, 16.0, 5.0)
    assert worth_telling(30.0, 5.0, 5.0)  # back to the interval
    assert not worth_telling(5.0, 5.0, 5.0)


def test_the_command_samples_until_stopped(
    store: Store, bed: Bed, redis_server: RedisServer
) -> None:
    """`slb envoy-stats` as it runs beside an Envoy: points appear, SIGTERM ends it."""
    _, _, envoy = echo_listener(store, bed, 23, ["b1"])
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "PATH": str(Path(SLB).parent)}  # fmt: skip
    argv = [SLB, "envoy-stats", "--node-id", "n1", "--admin",
            f"127.0.0.1:{envoy.admin_port}", "--interval", "0.5"]  # fmt: skip
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_until(
                lambda: any(TimeSeries(store).range(CONNECTIONS, 0, match={"listener": "echo"})),
                20,
                "points from slb envoy-stats",
            )
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
