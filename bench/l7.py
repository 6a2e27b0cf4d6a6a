"""L7 benchmarks: the xDS server and real Envoys, figures written to bench/results/l7.json.

    .venv/bin/python -m bench.l7 [--changes 120] [--skip NAME ...]

- translation: the desired state of 1,000 and 10,000 Services (10 endpoints each, one
  listener each, half HTTP and half GRPC, on 100 VIPs) -> every Envoy resource, packed
  and hashed as served; the median of five cold runs, in process;
- memory: `slb xds` serving those 10,000 Services from Redis: its resident set (VmRSS,
  and the peak VmHWM) once it has published them;
- sampler: `slb envoy-stats` beside an Envoy of those 10,000 Services (no health checks):
  the longest hold of Envoy's main thread in a sample (the median of five), its
  statistics and memory; the same with every statistic kept, sampled as now and as
  before #18's change (one /stats read, the whole /clusters page), for contrast; and
  what the sampler writes for 420,000 idle series, a sample every 30 s, and then one
  listener's chart read back among them (every series the console reads, median of 5);
- change to live: a store write that adds a route -> the first successful request on it
  through a real Envoy (Delta ADS), over --changes changes;
- fan-out: one change -> every one of 20 real Envoys has ACKed it (their status reports
  in Redis), over 20 changes;
- the scenarios of tests 1, 2 and 9 (tests/l7/test_envoy_grpc.py): per-request balance of
  3,000 calls on one connection, upstream connections for 500 client connections, and
  5,000 streams in flight through one Envoy worker; beside the last, the same load
  through an Envoy with default circuit breakers, for contrast.

Needs root (VIPs and backends live on a dummy interface, or a port-less bridge).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import results_file
from bench.procstat import rss_kib
from bench.results_file import metric
from bench.stalls import StallWatch
from devbed import l7harness as harness
from devbed.adsclient import AckingClient
from devbed.process import Process, free_port, wait_until
from devbed.redis import RedisServer
from l7.cache import SnapshotCache
from l7.server import gc_paused
from l7.stats import (
    CLUSTERS_PATH,
    HOST_COUNTERS,
    STATS_FILTER,
    EnvoyStats,
    Hosts,
    Sampler,
    admin_reader,
    parse_clusters,
    parse_stats,
)
from l7.translate.common import ROUTE
from slb.model import (
    Backend,
    Listener,
    LoadBalancer,
    Owner,
    OwnerKind,
    Protocol,
    Service,
    ServicePort,
)
from slb.resolve import resolve
from slb.snapshot import (
    Put,
    Snapshot,
    Stored,
)
from slb.storage import timeseries as ts
from slb.storage.store import Store
from web.auth import Accounts, Role

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "l7.json"
Metrics = dict[str, dict[str, Any]]


def log(message: str) -> None:
    print(f"[bench.l7] {message}", file=sys.stderr, flush=True)


# -- the desired state at scale -----------------------------------------------------------

OPERATOR = Owner(kind=OwnerKind.OPERATOR, name="bench")


def services_world(count: int, endpoints: int = 10, health_check: bool = True) -> list[Any]:
    """`count` Services with their own L7 listener (half HTTP, half GRPC) on count/100 VIPs;
    without `health_check`, the listeners check no endpoint."""
    checks = {} if health_check else {"health_check": None}
    objects: list[Any] = []
    for i in range(math.ceil(count / 100)):
        vip = f"198.18.{100 + i // 250}.{i % 250 + 1}"
        objects.append(LoadBalancer(name=f"lb{i}", vip=vip, owner=OPERATOR))
    for i in range(count):
        backends = tuple(
            Backend(address=f"198.19.{i // 250 % 256}.{i % 250 + 1}", port=8000 + j)
            for j in range(endpoints)
        )
        service = Service(
            namespace="bench", name=f"svc{i}", labels={"app": f"svc{i}"},
            load_balancer=f"lb{i // 100}", ports=(ServicePort(name="http", port=80),),
            backends={"http": backends},
        )  # fmt: skip
        objects.append(service)
        objects.append(
            Listener(
                name=f"svc{i}-http", load_balancer=f"lb{i // 100}",
                protocol=Protocol.GRPC if i % 2 else Protocol.HTTP, port=10000 + i % 100,
                target_port="http", owner=Owner(kind=OwnerKind.SERVICE, name=service.key),
                **checks,
            )
        )  # fmt: skip
    return objects


def snapshot_of(objects: list[Any]) -> Snapshot:
    by_kind: dict[str, dict[str, Stored[Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj.kind, {})[obj.key] = Stored(obj, 1)
    return Snapshot(1, by_kind)


def timed_translation(snapshot: Snapshot, runs: int = 5) -> tuple[list[float], list[float], Any]:
    """Seconds to resolve and to translate `snapshot` (a cold cache each run, the cyclic
    GC paused as the server pauses it), and the last run's snapshots by node group."""
    resolve_s, translate_s = [], []
    groups: Any = None
    for _ in range(runs):
        groups = None  # the previous run's, freed before the next is built
        with gc_paused():
            started = time.perf_counter()
            state = resolve(snapshot)
            resolved = time.perf_counter()
            groups = SnapshotCache().build(state, {})
            done = time.perf_counter()
        resolve_s.append(resolved - started)
        translate_s.append(done - resolved)
    return resolve_s, translate_s, groups


def bench_translation(metrics: Metrics, notes: dict[str, Any]) -> None:
    for count, name in ((1_000, "xds_translate_1k_s"), (10_000, "xds_translate_10k_s")):
        resolve_s, translate_s, _ = timed_translation(snapshot_of(services_world(count)))
        target = 0.5 if count == 10_000 else None  # issue #18 (was 1.0, #7)
        metrics[name] = metric(statistics.median(translate_s), "s", target)
        notes[f"resolve_{count}_s"] = round(statistics.median(resolve_s), 3)
        notes[f"translate_{count}_runs_s"] = [round(x, 3) for x in translate_s]
        log(f"translate {count}: {statistics.median(translate_s):.3f} s "
            f"(resolve {statistics.median(resolve_s):.3f} s)")  # fmt: skip


def rules_world(count: int, services: int = 100) -> list[Any]:
    """One HTTP listener with `count` forwarding rules of every kind, over `services`
    Services of 10 endpoints; one rule in ten names one of ten hosts."""
    objects: list[Any] = [
        LoadBalancer(name="lb", vip="198.18.100.1", owner=OPERATOR, allowed_namespaces=("bench",))
    ]
    for i in range(services):
        objects.append(Service(
            namespace="bench", name=f"svc{i}", labels={"app": f"svc{i}"}, load_balancer="lb",
            ports=(ServicePort(name="http", port=80),),
            backends={"http": tuple(Backend(address=f"198.19.{i}.{j + 1}", port=8080)
                                    for j in range(10))},
        ))  # fmt: skip
    rules = [_rule(i, services) for i in range(count)]
    objects.append(Listener(
        name="rules", load_balancer="lb", protocol=Protocol.HTTP, port=80, target_port="http",
        selector={"match_labels": {"app": "svc0"}}, owner=OPERATOR, routes=rules,
    ))  # fmt: skip
    return objects


def _rule(i: int, services: int) -> dict[str, Any]:
    def to(n: int, weight: int = 1) -> dict[str, Any]:
        return {"selector": {"match_labels": {"app": f"svc{n % services}"}}, "weight": weight}

    rule: dict[str, Any] = {"name": f"r{i}"}
    if i % 10 == 0:
        rule["hosts"] = [f"h{i % 100 // 10}.shop.test"]
    kind = i % 6
    if kind == 0:
        rule.update(path_prefix=f"/p{i}/", forward_to=[to(i)])
    elif kind == 1:
        rule.update(path_exact=f"/x{i}", fixed_response={"status": 404, "body": "no"})
    elif kind == 2:
        canary = [{"name": "x-canary", "type": "present"}]
        rule.update(path_regex=f"/r{i}/v[0-9]+/.*", headers=canary,
                    forward_to=[to(i, 9), to(i + 1, 1)])  # fmt: skip
    elif kind == 3:
        rule.update(path_prefix=f"/old{i}/", redirect={"path_prefix": "/new/", "code": 301})
    elif kind == 4:
        rule.update(path_prefix=f"/s{i}/", method="POST", rewrite={"path_prefix": "/"},
                    request_headers={"set": [{"name": "x-rule", "value": f"r{i}"}]},
                    forward_to=[to(i)])  # fmt: skip
    else:
        rule.update(path_prefix=f"/q{i}/", query_params=[{"name": "v", "value": "2"}],
                    retry={"attempts": 2, "retry_on": ["5xx"]}, forward_to=[to(i)])  # fmt: skip
    return rule


def bench_rules_translation(metrics: Metrics, notes: dict[str, Any]) -> None:
    resolve_s, translate_s, groups = timed_translation(snapshot_of(rules_world(1_000)))
    (config,) = groups["default"].resources[ROUTE].values()
    size = len(config.body.value)
    notes["rules_1000_route_config_bytes"] = size
    notes["rules_1000_resolve_ms"] = round(statistics.median(resolve_s) * 1000, 1)
    notes["rules_1000_translate_runs_ms"] = [round(x * 1000, 1) for x in translate_s]
    median = statistics.median(translate_s) * 1000
    metrics["rules_1000_translate_ms"] = metric(median, "ms", 100)
    log(f"1,000 rules translated in {median:.1f} ms (resolve "
        f"{notes['rules_1000_resolve_ms']} ms), route configuration {size} bytes")  # fmt: skip


# -- the real thing -----------------------------------------------------------------------


@contextmanager
def real_bed(redis: RedisServer, net: harness.TestNet, prefix: str) -> Iterator[harness.Bed]:
    directory = Path(tempfile.mkdtemp(prefix=f"bench-l7-{prefix}-"))
    bed = harness.Bed(directory, net, redis.url, prefix)
    try:
        yield bed
    finally:
        bed.close()


def store_for(redis: RedisServer, prefix: str) -> Store:
    return Store(redis.client(), prefix=prefix)


def bench_memory(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                 net: harness.TestNet) -> None:  # fmt: skip
    store = store_for(redis, "bench-rss")
    objects = services_world(10_000)
    for i in range(0, len(objects), 2_000):
        revision = store.apply([Put(o) for o in objects[i : i + 2_000]])
    log(f"10,000 Services in Redis at revision {revision}")
    with real_bed(redis, net, "bench-rss") as bed:
        started = time.monotonic()
        bed.xds.start()
        wait_until(lambda: bed.xds.metric("openslb_xds_revision") >= revision, 300, "publish")
        ready_s = time.monotonic() - started
        time.sleep(2)
        assert bed.xds.process is not None
        rss, peak = rss_kib(bed.xds.process.pid)
    metrics["xds_rss_10k_mb"] = metric(rss / 1024, "MiB", 200)  # issue #18 (was 300)
    notes["xds_peak_rss_10k_mb"] = round(peak / 1024, 1)
    notes["xds_cold_start_10k_s"] = round(ready_s, 2)
    log(f"slb xds with 10,000 Services: RSS {rss / 1024:.0f} MiB (peak {peak / 1024:.0f}), "
        f"serving after {ready_s:.1f} s")  # fmt: skip
    store.redis.delete(*store.redis.keys(f"{store.prefix}:*"))


SAMPLES = 5
ACTIVE = "listener_manager.total_listeners_active"


def bench_sampler(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                  net: harness.TestNet) -> None:  # fmt: skip
    """`slb envoy-stats` beside an Envoy of 10,000 Services (10 endpoints each; no health
    checks, as this machine allows 20,000 open files): how long a sample holds Envoy's main
    thread, which applies xDS too (#18). For contrast, an Envoy keeping every statistic
    (`--all-stats`), sampled both as now and as before (one /stats read, the whole
    /clusters page)."""
    store = store_for(redis, "bench-sampler")
    objects = services_world(10_000, health_check=False)
    for obj in objects:
        if isinstance(obj, LoadBalancer) and obj.vip:
            net.add(str(obj.vip))
    for i in range(0, len(objects), 2_000):
        revision = store.apply([Put(o) for o in objects[i : i + 2_000]])
    figures: dict[str, dict[str, Any]] = {}
    with real_bed(redis, net, "bench-sampler") as bed:
        bed.xds.start()
        wait_until(lambda: bed.xds.metric("openslb_xds_revision") >= revision, 300, "publish")
        for all_stats in (True, False):
            node = "all-stats" if all_stats else "kept-stats"
            envoy = bed.envoy(node, all_stats=all_stats)
            admin = f"127.0.0.1:{envoy.admin_port}"
            read = admin_reader(admin, timeout=120)
            wait_until(lambda e=envoy: e.stats(f"^{ACTIVE}$").get(ACTIVE, 0) >= 10_000,  # type: ignore[misc]
                       600, "10,000 listeners")  # fmt: skip
            time.sleep(5)
            memory = json.loads("".join(read("memory")))
            found = {"statistics": sum(1 for _ in read("stats")),
                     "allocated_mb": round(int(memory["allocated"]) / 2**20, 1)}  # fmt: skip
            ways: dict[str, Callable[[], object]] = {"sliced": EnvoyStats(store, node, read).once}
            if all_stats:
                ways["whole"] = lambda r=read: _sample_whole(r)  # type: ignore[misc]
            for way, sample in ways.items():
                holds, walls = [], []
                for _ in range(SAMPLES):
                    with StallWatch(admin, over_s=0.02) as watch:
                        time.sleep(0.1)
                        began = time.monotonic()
                        sample()
                        walls.append(time.monotonic() - began)
                        time.sleep(0.2)
                    holds.append(max((took for _, took in watch.stalls), default=0.0))
                found[f"{way}_longest_hold_ms"] = round(statistics.median(holds) * 1000, 1)
                found[f"{way}_sample_s"] = round(statistics.median(walls), 2)
            figures[node] = found
            log(f"sampler, {node}: {found}")
            envoy.stop()
            bed.envoys.remove(envoy)
    kept, every = figures["kept-stats"], figures["all-stats"]
    metrics["sampler_longest_hold_10k_ms"] = metric(kept["sliced_longest_hold_ms"], "ms", 250)
    metrics["envoy_statistics_10k"] = metric(kept["statistics"], "statistics")
    metrics["envoy_allocated_10k_mb"] = metric(kept["allocated_mb"], "MiB")
    notes["sampler_10k"] = figures
    notes["sampler_longest_hold_10k_before_ms"] = every["whole_longest_hold_ms"]
    store.redis.delete(*store.redis.keys(f"{store.prefix}:*"))


def bench_sample_writes(metrics: Metrics, notes: dict[str, Any], redis: RedisServer) -> None:
    """What `slb envoy-stats` writes to Redis for 10,000 idle listeners of 10 backends
    (420,000 series), a sample every 30 s (its period at that size) for five minutes of
    simulated time: the seconds each sample's writes take (`slb.storage.timeseries`,
    idle series thinned)."""
    store = store_for(redis, "bench-writes")
    hosts = Hosts()
    for i in range(10_000):
        name = f"svc{i}-http"
        hosts.listeners.add(name)
        for j in range(10):
            backend = f"198.19.{i // 250 % 256}.{i % 250 + 1}:{8000 + j}"
            hosts.counters[(name, backend)] = dict.fromkeys(HOST_COUNTERS, 0.0)
    sampler = Sampler("n1")
    series = ts.TimeSeries(store, idle_every_s=ts.IDLE_EVERY_S)
    start = time.time()
    took = []
    for k in range(11):
        sample = sampler.sample(start + 30 * k, {"stats": []}, hosts)
        began = time.monotonic()
        series.append_many(sample.points, start + 30 * k)
        took.append(round(time.monotonic() - began, 2))
    log(f"sample writes of 420,000 idle series, every 30 s: {took} s")
    steady = took[2:]  # the first two write every series (gauges, then rates) once
    metrics["sampler_writes_worst_10k_s"] = metric(max(steady), "s")
    notes["sampler_writes_10k_s"] = took
    notes["sampler_writes_10k_per_minute_s"] = round(sum(steady) / len(steady) * 2, 2)
    reads = []
    for i in range(5):  # one listener's chart among them, as the console reads it
        began = time.monotonic()
        for name in (*ts.SERIES, *ts.BACKEND_SERIES):
            series.range(name, start, match={"listener": f"svc{i * 1000}-http"})
        reads.append(time.monotonic() - began)
    metrics["chart_read_10k_ms"] = metric(round(statistics.median(reads) * 1000, 1), "ms")
    store.redis.delete(*store.redis.keys(f"{store.prefix}:*"))


def _sample_whole(read: Callable[[str], Iterable[str]]) -> None:
    """A sample's reads as `slb envoy-stats` made them before #18's change: all charted
    statistics in one /stats read, then the whole /clusters page."""
    query = "stats?format=json&usedonly&filter=" + urllib.parse.quote(STATS_FILTER, safe="")
    parse_stats(json.loads("".join(read(query))))
    parse_clusters(read(CLUSTERS_PATH))


def bench_change_to_live(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                         net: harness.TestNet, changes: int) -> None:  # fmt: skip
    import http.client  # noqa: PLC0415

    store = store_for(redis, "bench-live")
    with real_bed(redis, net, "bench-live") as bed:
        web = bed.backends(["w1", "w2"], first_host=151)
        vip = net.address(31)
        base = harness.listener("live", "HTTP", 8090, app="nothing", target_port="http")
        store.apply([
            Put(harness.load_balancer("lb", vip)),
            Put(harness.service("web", [(b.address, b.http_port) for b in web], port_name="http")),
            Put(base),
        ])  # fmt: skip
        bed.xds.start()
        bed.envoy("live1")
        conn = http.client.HTTPConnection(vip, 8090, timeout=5)

        def status(path: str) -> int:
            nonlocal conn
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(vip, 8090, timeout=5)
                return 0

        assert status("/") == 503  # no route yet, and no backends by default
        latencies = []
        routes: list[dict[str, Any]] = []
        for i in range(changes):
            to_web = [{"selector": {"match_labels": {"app": "web"}}}]
            routes = [*routes[-4:], {"name": f"r{i}", "path_prefix": f"/r{i}/",
                                     "forward_to": to_web}]  # fmt: skip
            updated = harness.listener(
                "live", "HTTP", 8090, app="nothing", target_port="http", routes=routes
            )
            started = time.perf_counter()
            store.put(updated)
            deadline = started + 10
            while status(f"/r{i}/x") != 200:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"route r{i} never went live")
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
        conn.close()
    p50, p99 = statistics.median(latencies), results_file.percentile(latencies, 99)
    metrics["xds_change_to_live_p50_ms"] = metric(p50, "ms")
    metrics["xds_change_to_live_p99_ms"] = metric(p99, "ms", 200)
    notes["change_to_live_max_ms"] = round(max(latencies), 1)
    log(f"change to live over {changes}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(latencies):.1f} ms")  # fmt: skip


def bench_console_loop(
    metrics: Metrics, notes: dict[str, Any], redis: RedisServer, net: harness.TestNet,
    *, changes: int = 50, trials: int = 5,
) -> None:  # fmt: skip
    """The console's write and read paths through a real Envoy, with a real `slb console`
    and `slb envoy-stats` (its default 5 s interval) beside it:

    - a rule added through the REST API (`PUT .../rules/NAME`) -> the first request it
      matches answered by its Service (the listener keeps its five newest rules; removals
      are not timed), over `changes`;
    - traffic starting on the listener -> the first non-zero requests/s point in the
      console's chart series (`GET .../metrics`), over `trials`, each after the series
      fell back to zero."""
    import requests  # noqa: PLC0415

    prefix = "bench-console-loop"
    store = store_for(redis, prefix)
    accounts = Accounts(store)
    accounts.create_user("bench", "bench-password-1", Role.ADMIN)
    user = accounts.user("bench")
    assert user is not None
    _, secret = accounts.create_token(user, "bench")
    with real_bed(redis, net, prefix) as bed:
        web = bed.backends(["rw1"], first_host=161)
        vip = net.address(32)
        store.apply([
            Put(harness.load_balancer("lb", vip)),
            Put(harness.service("web", [(b.address, b.http_port) for b in web], port_name="http")),
            Put(harness.listener("rules", "HTTP", 8091, app="nothing", target_port="http")),
        ])  # fmt: skip
        port = free_port()
        env = {"OPENSLB_CONFIG": "", "OPENSLB_REDIS_URL": redis.url,
               "OPENSLB_REDIS_PREFIX": prefix, "OPENSLB_CONSOLE_BIND": f"127.0.0.1:{port}",
               "OPENSLB_CONSOLE_SECRET_KEY_FILE": str(bed.directory / "key")}  # fmt: skip
        slb = [sys.executable, "-m", "slb.cli"]
        console = Process("console", [*slb, "console"], bed.directory, env=env)
        console.start()
        sampler: Process | None = None
        try:
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {secret}"
            rules = f"http://127.0.0.1:{port}/api/v1/listeners/rules"

            wait_until(lambda: _version(api, rules, console) > 0, 30, "slb console")
            bed.xds.start()
            envoy = bed.envoy("rules1")
            proxy = requests.Session()
            wait_until(lambda: _status(proxy, f"http://{vip}:8091/") == 503, 30, "the listener")
            latencies = _rule_latencies(api, rules, console, proxy, base=f"http://{vip}:8091",
                                        changes=changes)  # fmt: skip
            stats = ["envoy-stats", "--node-id", "rules1", "--admin",
                     f"127.0.0.1:{envoy.admin_port}"]  # fmt: skip
            sampler = Process("envoy-stats", [*slb, *stats], bed.directory, env=env).start()
            lags = _chart_lags(api, rules, proxy, f"http://{vip}:8091/r{changes - 1}/x", trials)
        finally:
            if sampler is not None:
                sampler.stop()
            console.stop()
    p50, p99 = statistics.median(latencies), results_file.percentile(latencies, 99)
    metrics["rule_change_to_live_p99_ms"] = metric(p99, "ms", 300)
    notes["rule_change_to_live_p50_ms"] = round(p50, 1)
    log(f"rule added in the REST API -> live over {changes}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    metrics["l7_chart_lag_s"] = metric(statistics.median(lags), "s", 15)
    notes["l7_chart_lag_runs_s"] = [round(x, 1) for x in lags]
    log(f"traffic -> first non-zero point on the chart: median {statistics.median(lags):.1f} s, "
        f"max {max(lags):.1f} s over {trials}")  # fmt: skip


def bench_acl_to_enforced(
    metrics: Metrics, notes: dict[str, Any], redis: RedisServer, net: harness.TestNet,
    *, changes: int = 50,
) -> None:  # fmt: skip
    """A client's network denied in the store -> its next connection refused by a real
    Envoy, over `changes` (each denial is lifted, untimed, before the next)."""
    prefix = "bench-acl"
    store = store_for(redis, prefix)
    with real_bed(redis, net, prefix) as bed:
        (backend,) = bed.backends(["acl1"], first_host=171)
        vip, client = net.address(33), net.address(34)

        def web(**acl: Any) -> Put:
            return Put(harness.listener("acl", "HTTP", 8092, app="web", target_port="http",
                                        health_check=None, **acl))  # fmt: skip

        store.apply([
            Put(harness.load_balancer("lb", vip)),
            Put(harness.service("web", [(backend.address, backend.http_port)], port_name="http")),
            web(),
        ])  # fmt: skip
        bed.xds.start()
        bed.envoy("acl1")
        wait_until(lambda: _served(vip, client), 30, "the listener")
        latencies = []
        for _ in range(changes):
            started = time.perf_counter()
            store.apply([web(denied_sources=[f"{client}/32"])])
            deadline = started + 10
            while _served(vip, client):
                if time.perf_counter() > deadline:
                    raise TimeoutError("the denial never took effect")
            latencies.append((time.perf_counter() - started) * 1000)
            store.apply([web()])
            wait_until(lambda: _served(vip, client), 10, "the denial lifted")
    p50, p99 = statistics.median(latencies), results_file.percentile(latencies, 99)
    metrics["acl_change_to_enforced_p99_ms"] = metric(p99, "ms", 300)
    notes["acl_change_to_enforced_p50_ms"] = round(p50, 1)
    log(f"client denied in the store -> refused by Envoy over {changes}: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms")  # fmt: skip


def _served(vip: str, source: str) -> bool:
    """Whether a new connection from `source` gets an HTTP answer from the listener."""
    try:
        harness.http_request(vip, 8092, "acl.test", "/", source=source)
    except OSError:  # refused at accept: reset, or closed before any answer
        return False
    return True


def _version(api: Any, listener_url: str, console: Process) -> int:
    console.check_alive()
    return int(api.get(listener_url, timeout=5).json()["version"])


def _rule_latencies(api: Any, listener_url: str, console: Process, proxy: Any, *, base: str,
                    changes: int) -> list[float]:  # fmt: skip
    """Milliseconds from each rule's PUT to the first 200 through Envoy on its path."""
    latencies = []
    for i in range(changes):
        body: dict[str, Any] = {
            "path_prefix": f"/r{i}/", "version": _version(api, listener_url, console),
            "forward_to": [{"selector": {"match_labels": {"app": "web"}}}],
        }  # fmt: skip
        started = time.perf_counter()
        answer = api.put(f"{listener_url}/rules/r{i}", json=body, timeout=5)
        assert answer.status_code == 200, answer.text
        deadline = started + 10
        while _status(proxy, f"{base}/r{i}/x") != 200:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"rule r{i} never went live")
        latencies.append((time.perf_counter() - started) * 1000)
        if i >= 5:
            version = _version(api, listener_url, console)
            gone = api.delete(f"{listener_url}/rules/r{i - 5}", params={"version": version},
                              timeout=5)  # fmt: skip
            assert gone.status_code == 200, gone.text
        time.sleep(0.05)
    return latencies


def _chart_lags(api: Any, listener_url: str, proxy: Any, url: str, trials: int) -> list[float]:
    """Seconds from traffic starting to the first non-zero requests/s point, per trial."""

    def newest_rps() -> float:
        answer = api.get(f"{listener_url}/metrics", params={"window": 60, "step": 1}, timeout=5)
        points = answer.json()["series"]["requests_per_second"]
        return float(points[-1]["value"]) if points else 0.0

    lags = []
    for _ in range(trials):
        wait_until(lambda: newest_rps() == 0.0, 60, "the chart at rest")
        started = time.monotonic()
        while newest_rps() == 0.0:
            for _ in range(20):  # bounded: 20 requests a turn, 60 s at most
                _status(proxy, url)
            if time.monotonic() - started > 60:
                raise TimeoutError("no traffic on the chart after 60 s")
        lags.append(time.monotonic() - started)
    return lags


def _status(session: Any, url: str) -> int:
    try:
        return int(session.get(url, timeout=5).status_code)
    except OSError:
        return 0


def bench_fanout(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                 net: harness.TestNet, *, envoys: int = 20, clients: int = 80,
                 changes: int = 20) -> None:  # fmt: skip
    """One change to 100 connected Envoys: `envoys` real ones and `clients` ADS clients
    that behave like Envoy (Delta, ACK each response); the time until all report it."""
    store = store_for(redis, "bench-fanout")
    with real_bed(redis, net, "bench-fanout") as bed:
        web = bed.backends(["f1"], first_host=161)
        vip = net.address(32)
        store.apply([
            Put(harness.load_balancer("lb", vip)),
            Put(harness.service("web", [(web[0].address, web[0].http_port)], port_name="http")),
            Put(harness.listener("web", "HTTP", 8091, target_port="http")),
        ])  # fmt: skip
        bed.xds.start()
        nodes = [f"fan{i}" for i in range(envoys)]
        for node in nodes:
            bed.envoy(node)
        fakes = [AckingClient(bed.xds.address, f"ads{i}", "default") for i in range(clients)]
        everyone = nodes + [f"ads{i}" for i in range(clients)]
        try:
            harness.wait_programmed(store, everyone, store.revision(), timeout=60)
            times = []
            for i in range(changes):
                backends = [(web[0].address, web[0].http_port), (f"198.18.250.{i + 1}", 8080)]
                started = time.perf_counter()
                revision = store.put(harness.service("web", backends, port_name="http"))
                harness.wait_programmed(store, everyone, revision, timeout=30)
                times.append((time.perf_counter() - started) * 1000)
                time.sleep(0.1)
        finally:
            for fake in fakes:
                fake.close()
    total = envoys + clients
    metrics[f"xds_fanout_{total}_p99_ms"] = metric(results_file.percentile(times, 99), "ms", 1000)
    notes[f"fanout_{total}_p50_ms"] = round(statistics.median(times), 1)
    p99 = results_file.percentile(times, 99)
    log(f"fan-out to {envoys} Envoys and {clients} ADS clients over {changes} changes: "
        f"p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms")  # fmt: skip


def grpc_bed(store: Store, bed: harness.Bed, host: int, max_streams: int = 0
             ) -> tuple[str, list[harness.BackendServer]]:  # fmt: skip
    backends = bed.backends(["b1", "b2", "b3"], first_host=171, max_streams=max_streams)
    vip = bed.net.address(host)
    store.apply([
        Put(harness.load_balancer("lb", vip)),
        Put(harness.service("echo", [(b.address, b.grpc_port) for b in backends])),
        Put(harness.listener("echo", "GRPC", 50051)),
    ])  # fmt: skip
    return vip, backends


def bench_grpc(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
               net: harness.TestNet) -> None:  # fmt: skip
    store = store_for(redis, "bench-grpc1")
    with real_bed(redis, net, "bench-grpc1") as bed:
        vip, backends = grpc_bed(store, bed, 33)
        bed.xds.start()
        bed.envoy("g1")
        harness.wait_for_answer(f"{vip}:50051")
        counts = harness.balance(f"{vip}:50051", 3000)
        deviation = max(abs(counts[b.name] / 3000 * 100 - 100 / 3) for b in backends)
        bed.l4_envoy((vip, 50052), backends)
        l4_counts = harness.balance(f"{vip}:50052", 3000)
    metrics["grpc_balance_max_dev_pts"] = metric(deviation, "pts", 5)
    notes["balance_3000_calls"] = dict(counts)
    notes["l4_proxy_3000_calls"] = dict(l4_counts)
    log(f"balance: {dict(counts)} (max deviation {deviation:.2f} pts); "
        f"through an L4 proxy: {dict(l4_counts)}")  # fmt: skip


def bench_convergence(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                      net: harness.TestNet) -> None:  # fmt: skip
    store = store_for(redis, "bench-grpc2")
    with real_bed(redis, net, "bench-grpc2") as bed:
        vip, _ = grpc_bed(store, bed, 34)
        bed.xds.start()
        envoy = bed.envoy("g2", concurrency=2)
        harness.wait_for_answer(f"{vip}:50051")
        sampler = harness.PeakSampler(
            envoy, "cluster.echo.upstream_rq_active", "echo", interval=0.05
        )
        with sampler as peak2:
            result = harness.load(f"{vip}:50051", connections=500, streams=1, rounds=6, pause_ms=20)
        per_backend = harness.host_stats(envoy, "echo", "cx_total")
        workers = harness.workers(envoy)
    metrics["upstream_cx_per_backend_500"] = metric(max(per_backend.values()), "connections",
                                                    workers)  # fmt: skip
    metrics["envoy_workers"] = metric(workers, "workers")
    notes["convergence_failed_calls"] = result.failed
    notes["convergence_peak_in_flight_per_backend"] = peak2.hosts
    log(f"500 client connections, {result.ok} calls ({result.failed} failed): upstream "
        f"connections per backend {per_backend}, {workers} workers")  # fmt: skip


def bench_streams(metrics: Metrics, notes: dict[str, Any], redis: RedisServer,
                  net: harness.TestNet) -> None:  # fmt: skip
    store = store_for(redis, "bench-grpc3")
    with real_bed(redis, net, "bench-grpc3") as bed:
        vip, backends = grpc_bed(store, bed, 35, max_streams=128)
        bed.xds.start()
        envoy = bed.envoy("g3", concurrency=1)
        harness.wait_for_answer(f"{vip}:50051")
        with harness.PeakSampler(envoy, "cluster.echo.upstream_rq_active", "echo") as peak:
            result = harness.load(
                f"{vip}:50051", connections=500, streams=10, rounds=2, hold_ms=6000
            )
        upstream = harness.host_stats(envoy, "echo", "cx_total")
        contrast = bed.default_envoy((vip, 50053), backends)
        harness.wait_for_answer(f"{vip}:50053")
        defaults = harness.load(f"{vip}:50053", connections=500, streams=10, rounds=1, hold_ms=6000)
        default_cx = harness.host_stats(contrast, "echo", "cx_total")
    metrics["failed_calls_5000_streams"] = metric(result.failed, "calls", 0)
    metrics["upstream_cx_5000_streams"] = metric(sum(upstream.values()), "connections")
    notes["peak_upstream_rq_active_5000_streams"] = peak.value
    notes["errors_5000_streams"] = dict(result.errors)
    notes["upstream_cx_5000_streams_per_backend"] = upstream
    notes["peak_in_flight_5000_streams_per_backend"] = peak.hosts
    notes["default_breakers_failed_calls_5000_streams"] = defaults.failed
    notes["default_breakers_calls_5000_streams"] = defaults.ok + defaults.failed
    notes["default_breakers_upstream_cx"] = default_cx
    log(f"5,000 streams through one worker: {result.ok} ok, {result.failed} failed, peak "
        f"{peak.value} in flight, upstream connections {upstream}; with Envoy's default "
        f"breakers: {defaults.failed} of {defaults.ok + defaults.failed} failed, "
        f"upstream {default_cx}")  # fmt: skip


RETIRED = {"xds_fanout_20_ms"}
"""Metrics this benchmark no longer measures (20 Envoys became 20 and 80 ADS clients)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=120)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["translate", "rules", "memory", "sampler", "live",
                                 "console-loop", "acl", "fanout", "grpc"])  # fmt: skip
    args = parser.parse_args()
    metrics: Metrics = {}
    notes: dict[str, Any] = {}
    if "translate" not in args.skip:
        bench_translation(metrics, notes)
    if "rules" not in args.skip:
        bench_rules_translation(metrics, notes)
    net = harness.TestNet().create()
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-l7-redis-"))).start()
    try:
        if "memory" not in args.skip:
            bench_memory(metrics, notes, redis, net)
        if "sampler" not in args.skip:
            bench_sample_writes(metrics, notes, redis)
            bench_sampler(metrics, notes, redis, net)
        if "live" not in args.skip:
            bench_change_to_live(metrics, notes, redis, net, args.changes)
        if "console-loop" not in args.skip:
            bench_console_loop(metrics, notes, redis, net)
        if "acl" not in args.skip:
            bench_acl_to_enforced(metrics, notes, redis, net)
        if "fanout" not in args.skip:
            bench_fanout(metrics, notes, redis, net)
        if "grpc" not in args.skip:
            bench_grpc(metrics, notes, redis, net)
            bench_convergence(metrics, notes, redis, net)
            bench_streams(metrics, notes, redis, net)
    finally:
        redis.stop()
        net.delete()
    notes["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if RESULTS.exists() and args.skip:  # a partial run keeps the other figures
        previous = json.loads(RESULTS.read_text())
        kept = {k: v for k, v in previous.get("metrics", {}).items() if k not in RETIRED}
        metrics = {**kept, **metrics}
        notes = {**previous.get("notes", {}), **notes}
    path = results_file.write("l7", metrics, notes=notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
