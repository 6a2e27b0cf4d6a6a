"""Envoy's traffic and its view of the backends, sampled into Redis for the console.

`slb envoy-stats` runs beside each Envoy, whose admin API listens on loopback only, and
every few seconds reads two admin pages:
  /stats?format=json&type=T&filter=RE    the HTTP connection managers' counters (each
        listener's stat prefix is its name), its limits' refusals, the clusters'
        `upstream_rq_time` histograms (quantiles since the previous read: the bootstrap
        flushes statistics when they are read, `l7.bootstrap`) and their
        `membership_total`, which names every cluster that has had hosts; one statistic
        type a read, only those ever set (`STAT_TYPES`)
  /clusters?filter=RE                     those clusters' hosts, with their counters and
        health flags, as text, `CLUSTERS_PER_READ` clusters a read (`clusters_paths`).
        At 10,000 clusters of 10 hosts the whole page as JSON held Envoy's main thread
        1.7 s, as text 0.3 s (#18). It is read line by line, never held whole
Envoy renders each admin read whole on its main thread, which applies xDS too, so the
sampler pauses after each read as long as it took (`BETWEEN_READS_S`).
and writes:
  slb.storage.timeseries   per listener (labels tier=l7, listener, node): connections,
        new connections, requests, 2xx/4xx/5xx responses, bytes in and out and each
        limit's refusals per second, upstream p50/p99 ms (the worst of the listener's
        clusters); per backend
        (label backend too): active connections, requests and errors per second
  slb.storage.envoyhosts   per listener, each host's health as Envoy sees it

Rates are counter differences over the time between two samples, so the first sample
after a start gives gauges only, and a counter that went back (Envoy restarted) gives no
rate that time. Listeners and backends are those of openslb's clusters (a listener's own
cluster is named after it, a route's `listener/route`, `l7.translate.common`) and the
listeners whose connection managers have statistics.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l7.bootstrap import STATS_LISTENER
from slb.storage import envoyhosts
from slb.storage import timeseries as ts
from slb.storage.envoyhosts import EnvoyHosts
from slb.storage.store import Store

log = logging.getLogger("openslb.envoy-stats")

HCM_COUNTERS = {
    "downstream_cx_total": ts.NEW_CONNECTIONS_PER_SECOND,
    "downstream_rq_total": ts.REQUESTS_PER_SECOND,
    "downstream_rq_2xx": ts.RESPONSES_2XX_PER_SECOND,
    "downstream_rq_4xx": ts.RESPONSES_4XX_PER_SECOND,
    "downstream_rq_5xx": ts.RESPONSES_5XX_PER_SECOND,
    "downstream_cx_rx_bytes_total": ts.BYTES_IN_PER_SECOND,
    "downstream_cx_tx_bytes_total": ts.BYTES_OUT_PER_SECOND,
}
"""The connection managers' counters (`http.LISTENER.NAME`) and the rate each becomes."""
LIMIT_COUNTERS = {
    "connection_limit.{}.limited_connections": ts.LIMITED_CONNECTIONS_PER_SECOND,
    "local_rate_limit.{}.connections_per_second.rate_limited":
        ts.RATE_LIMITED_CONNECTIONS_PER_SECOND,
    "{}.requests_per_second.http_local_rate_limit.rate_limited":
        ts.RATE_LIMITED_REQUESTS_PER_SECOND,
}  # fmt: skip
"""Each limit's refusals (`l7.translate.listener`; {} is the listener) and its rate."""
HCM_ACTIVE = "downstream_cx_active"
LATENCY = "upstream_rq_time"
MEMBERSHIP = "membership_total"
QUANTILES = {50.0: ts.UPSTREAM_P50_MS, 99.0: ts.UPSTREAM_P99_MS}

STATS_FILTER = (
    rf"^(http\.[^.]+\.({'|'.join([HCM_ACTIVE, *HCM_COUNTERS])})"
    rf"|cluster\.[^.]+\.({LATENCY}|{MEMBERSHIP})"
    + "".join("|" + re.escape(c).replace(r"\{\}", "{}").format("[^.]+") for c in LIMIT_COUNTERS)
    + r")$"
)
"""What is charted, and the gauge that names each cluster: Envoy renders nothing else
(listener and cluster names hold no dot)."""


STAT_TYPES = {"Counters": "&usedonly", "Gauges": "&usedonly", "Histograms": "&usedonly"}
"""/stats is read one type at a time: each read walks every scope of Envoy's statistics on
its main thread, whatever the filter keeps (about 0.15 s at 10,000 Services, #18), so
three short holds take the place of one long one. Each asks only for the statistics ever
set (`usedonly`), which Envoy skips before it names and matches them: every gauge named
cost a quarter more of the read. A cluster that never had a host is then not named (it
has no hosts to read), and a listener is named by its clusters' hosts or its traffic."""
ENVOYS_OWN = frozenset({"admin", STATS_LISTENER})
"""Connection managers of Envoy's admin and the bootstrap, not openslb listeners."""


def stats_paths() -> list[str]:
    query = "format=json&filter=" + urllib.parse.quote(STATS_FILTER, safe="")
    return [f"stats?type={kind}{used}&{query}" for kind, used in STAT_TYPES.items()]


BETWEEN_READS_S = 0.01
"""The shortest pause before an admin read of a sample; after a long read, the pause is as
long as that read took. Envoy applies what xDS sent meanwhile before the next read holds
its main thread: a change takes a few xDS round trips, which would otherwise meet one
read after another."""


def read_stats(read: Callable[[str], Iterable[str]]) -> dict[str, Any]:
    """/stats?format=json of the charted statistics, read one type at a time, as one page."""
    stats: list[Any] = []
    for path in stats_paths():
        stats += json.loads("".join(read(path))).get("stats", ())
    return {"stats": stats}


CLUSTERS_PATH = "clusters"
CLUSTERS_PER_READ = 200
"""Clusters asked for in one read of /clusters: Envoy's main thread renders a read whole,
about 0.06 ms a cluster of 10 hosts, and in between applies what xDS sent (#18)."""
HOST_COUNTERS = ("cx_active", "rq_total", "rq_error")
"""The per-host statistics charted (`slb.storage.timeseries` BACKEND_*)."""
HEALTH_FLAGS = "health_flags"


# -- pure: the admin pages' JSON -> figures ------------------------------------------------


def parse_stats(doc: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """/stats?format=json -> (counter and gauge values by name, interval quantiles by
    histogram name: percentile -> ms; a histogram without samples in the interval has none)."""
    values: dict[str, float] = {}
    quantiles: dict[str, dict[float, float]] = {}
    for entry in doc.get("stats", ()):
        if "histograms" in entry:
            histograms = entry["histograms"]
            supported = [float(q) for q in histograms.get("supported_quantiles", ())]
            for h in histograms.get("computed_quantiles", ()):
                points = {
                    q: float(v["interval"])
                    for q, v in zip(supported, h.get("values", ()), strict=False)
                    if v.get("interval") is not None
                }
                if points:
                    quantiles[h["name"]] = points
        elif "name" in entry:
            values[entry["name"]] = float(entry.get("value") or 0)
    return values, quantiles


def listeners_named(values: Mapping[str, float]) -> set[str]:
    """The listeners whose connection manager has statistics (`http.LISTENER.STAT`)."""
    out = set()
    for name in values:
        kind, _, rest = name.partition(".")
        listener, _, stat = rest.partition(".")
        if kind == "http" and (stat == HCM_ACTIVE or stat in HCM_COUNTERS):
            out.add(listener)
    return out - ENVOYS_OWN


def clusters_named(doc: Mapping[str, Any]) -> list[str]:
    """The clusters in /stats?format=json, named by their `membership_total` gauge (set
    once a cluster has had hosts), sorted."""
    suffix = "." + MEMBERSHIP
    return sorted(
        entry["name"][len("cluster.") : -len(suffix)]
        for entry in doc.get("stats", ())
        if entry.get("name", "").startswith("cluster.") and entry["name"].endswith(suffix)
    )


def clusters_paths(names: Sequence[str], per_read: int = CLUSTERS_PER_READ) -> list[str]:
    """/clusters paths that together ask for exactly the clusters `names`, `per_read` in
    each (a filter matches a cluster's whole name)."""
    out = []
    for i in range(0, len(names), per_read):
        regex = "^(?:" + "|".join(re.escape(n) for n in names[i : i + per_read]) + ")$"
        out.append(f"{CLUSTERS_PATH}?filter={urllib.parse.quote(regex, safe='')}")
    return out


def listener_of(cluster: str) -> str:
    """The listener a cluster serves: its own (`NAME`) or one of its routes' (`NAME/ROUTE`)."""
    return cluster.split("/", 1)[0]


def host_state(flags: str) -> str:
    """A host's `health_flags` on /clusters (`healthy`, or `/failed_active_hc/...`) -> one
    of `slb.storage.envoyhosts.STATES`, the gravest flag winning."""
    if "/failed_active_hc" in flags:
        return envoyhosts.FAILING
    if "/failed_outlier_check" in flags:
        return envoyhosts.EJECTED
    if "/pending_active_hc" in flags:
        return envoyhosts.PENDING
    if "/degraded_active_hc" in flags or "/degraded_eds_health" in flags:
        return envoyhosts.DEGRADED
    return envoyhosts.HEALTHY


_WORST = {s: i for i, s in enumerate((envoyhosts.HEALTHY, envoyhosts.DEGRADED,
                                       envoyhosts.PENDING, envoyhosts.EJECTED,
                                       envoyhosts.FAILING))}  # fmt: skip


@dataclass
class Hosts:
    """/clusters, openslb's clusters only, folded per listener."""

    listeners: set[str] = field(default_factory=set)
    counters: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(listener, ADDRESS:PORT) -> host statistic -> value, summed over its clusters."""
    states: dict[str, dict[str, str]] = field(default_factory=dict)
    """listener -> ADDRESS:PORT -> state, the worst over its clusters."""


ClustersPage = dict[str, dict[str, dict[str, str]]]
"""cluster -> host (ADDRESS:PORT, or "" for the cluster's own lines) -> statistic -> value."""


def read_clusters_page(lines: Iterable[str], wanted: Container[str] | None = None) -> ClustersPage:
    """/clusters as text, line by line, keeping the `wanted` statistics (all if None).

    A host line is `CLUSTER::HOST:PORT::STAT::VALUE` (an IPv6 host in brackets holds `::`
    itself); a cluster's own lines are `CLUSTER::added_via_api::true` (host "") and
    `CLUSTER::default_priority::max_connections::1024` (a host that is no address). Cluster
    names hold no `::`. At 10,000 clusters the page has 1.6 million lines: this loop is
    kept plain (about 1 s there)."""
    out: ClustersPage = {}
    for line in lines:
        head, _, value = line.rpartition("::")
        rest, _, stat = head.rpartition("::")
        if wanted is not None and stat not in wanted:
            continue
        cluster, _, host = rest.partition("::")
        hosts = out.get(cluster)
        if hosts is None:
            hosts = out[cluster] = {}
        stats = hosts.get(host)
        if stats is None:
            stats = hosts[host] = {}
        stats[stat] = value.rstrip("\n")
    return out


ADDED_VIA_API = "added_via_api"
_WANTED = frozenset((ADDED_VIA_API, HEALTH_FLAGS, *HOST_COUNTERS))


def parse_clusters(lines: Iterable[str]) -> Hosts:
    """/clusters (text) -> openslb's clusters' hosts, folded per listener; the bootstrap's
    own clusters (xDS, the admin listener's) are not `added_via_api` and name no listener."""
    out = Hosts()
    for cluster, hosts in read_clusters_page(lines, _WANTED).items():
        if hosts.get("", {}).get(ADDED_VIA_API) != "true":
            continue
        listener = listener_of(cluster)
        out.listeners.add(listener)
        states = out.states.setdefault(listener, {})
        for host, stats in hosts.items():
            if not host:
                continue
            name = host.replace("[", "").replace("]", "")  # as the console writes it
            counters = out.counters.setdefault((listener, name), {})
            for stat in HOST_COUNTERS:
                counters[stat] = counters.get(stat, 0.0) + float(stats.get(stat) or 0)
            state = host_state(stats.get(HEALTH_FLAGS, ""))
            if _WORST[state] >= _WORST.get(states.get(name, envoyhosts.HEALTHY), 0):
                states[name] = state
    return out


Point = tuple[str, dict[str, str], float]


@dataclass
class Sample:
    points: list[Point]
    hosts: dict[str, dict[str, str]]


class Sampler:
    """Turns successive readings of one Envoy's admin pages into chart points.

    Holds the previous reading's counters, to make rates of them.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._last: tuple[float, dict[Any, float]] | None = None

    def sample(self, now: float, stats: Mapping[str, Any], hosts: Hosts) -> Sample:
        values, quantiles = parse_stats(stats)
        latency = _worst_latency(quantiles)
        counters: dict[Any, float] = {}
        points: list[Point] = []
        for listener in sorted(hosts.listeners | listeners_named(values)):
            labels = {"tier": "l7", "listener": listener, "node": self.node}
            prefix = f"http.{listener}."
            points.append((ts.CONNECTIONS, labels, values.get(prefix + HCM_ACTIVE, 0.0)))
            for stat in HCM_COUNTERS:
                counters[(listener, stat)] = values.get(prefix + stat, 0.0)
            for stat in LIMIT_COUNTERS:
                counters[(listener, stat)] = values.get(stat.format(listener), 0.0)
            for q, series in QUANTILES.items():
                found = latency.get(listener, {}).get(q)
                if found is not None:
                    points.append((series, labels, found))
        for (listener, host), stats_of_host in sorted(hosts.counters.items()):
            labels = {"tier": "l7", "listener": listener, "node": self.node, "backend": host}
            points.append((ts.BACKEND_CONNECTIONS, labels, stats_of_host.get("cx_active", 0.0)))
            counters[(listener, host, "rq_total")] = stats_of_host.get("rq_total", 0.0)
            counters[(listener, host, "rq_error")] = stats_of_host.get("rq_error", 0.0)
        points += self._rates(now, counters)
        self._last = (now, counters)
        return Sample(points, hosts.states)

    def _rates(self, now: float, counters: Mapping[Any, float]) -> list[Point]:
        if self._last is None or now <= self._last[0]:
            return []
        then, before = self._last
        elapsed = now - then
        out: list[Point] = []
        sums: dict[tuple[str, str], float] = {}
        for key, value in counters.items():
            previous = before.get(key)
            if previous is None or value < previous:
                continue  # new, or Envoy restarted: no rate this time
            rate = (value - previous) / elapsed
            if len(key) == 2:
                listener, stat = key
                labels = {"tier": "l7", "listener": listener, "node": self.node}
                out.append((HCM_COUNTERS.get(stat) or LIMIT_COUNTERS[stat], labels, rate))
                if stat in ("downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total"):
                    sums[(listener, "bytes")] = sums.get((listener, "bytes"), 0.0) + rate
            else:
                listener, host, stat = key
                labels = {"tier": "l7", "listener": listener, "node": self.node, "backend": host}
                series = (
                    ts.BACKEND_REQUESTS_PER_SECOND if stat == "rq_total"
                    else ts.BACKEND_ERRORS_PER_SECOND
                )  # fmt: skip
                out.append((series, labels, rate))
        for (listener, _), rate in sums.items():
            labels = {"tier": "l7", "listener": listener, "node": self.node}
            out.append((ts.BYTES_PER_SECOND, labels, rate))
        return out


def _worst_latency(quantiles: Mapping[str, Mapping[float, float]]) -> dict[str, dict[float, float]]:
    """listener -> percentile -> ms: the worst of its clusters' `upstream_rq_time`."""
    out: dict[str, dict[float, float]] = {}
    for name, values in quantiles.items():
        if not (name.startswith("cluster.") and name.endswith("." + LATENCY)):
            continue
        listener = listener_of(name[len("cluster.") : -len(LATENCY) - 1])
        mine = out.setdefault(listener, {})
        for q, ms in values.items():
            mine[q] = max(ms, mine.get(q, ms))
    return out


# -- the shell: the admin API in, Redis out ------------------------------------------------


def admin_reader(admin: str, timeout: float = 5.0) -> Callable[[str], Iterator[str]]:
    """GET a page of the admin API at HOST:PORT, line by line (/clusters of 10,000
    clusters is 100 MB of text)."""

    def read(path: str) -> Iterator[str]:
        url = f"http://{admin}/{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            yield from io.TextIOWrapper(resp, encoding="utf-8")

    return read


class EnvoyStats:
    """One Envoy's sampler and the Redis it writes to."""

    def __init__(self, store: Store, node: str, read: Callable[[str], Iterable[str]]) -> None:
        self.sampler = Sampler(node)
        self.node = node
        self.read = read
        self.timeseries = ts.TimeSeries(store, idle_every_s=ts.IDLE_EVERY_S)
        self.hosts = EnvoyHosts(store)
        self.took: dict[str, float] = {}
        """The last sample's seconds per step: each admin page read and parsed, the writes."""
        self._pause = BETWEEN_READS_S

    def _read(self, path: str) -> Iterator[str]:
        time.sleep(self._pause)
        began = time.monotonic()
        yield from self.read(path)
        self._pause = max(BETWEEN_READS_S, time.monotonic() - began)

    def once(self, now: float | None = None) -> Sample:
        self.took = {}  # a sample that fails tells no steps
        self._pause = BETWEEN_READS_S
        began = time.monotonic()
        stats = read_stats(self._read)
        stats_read = time.monotonic()
        pages = (self._read(path) for path in clusters_paths(clusters_named(stats)))
        hosts = parse_clusters(itertools.chain.from_iterable(pages))  # one read at a time
        clusters_read = time.monotonic()
        now = time.time() if now is None else now
        sample = self.sampler.sample(now, stats, hosts)
        if sample.points:
            self.timeseries.append_many(sample.points, now)
        self.hosts.write(self.node, now, sample.hosts)
        self.took = {"/stats": stats_read - began, "/clusters": clusters_read - stats_read,
                     "the rest": time.monotonic() - clusters_read}  # fmt: skip
        return sample

    def run(self, interval_s: float, stopped: threading.Event) -> None:
        """Sample every `interval_s` (further apart when sampling is slow, `pause_after`)
        until `stopped`; an Envoy that does not answer is logged and tried again at the next
        tick (its entries age out of the console). The period is logged with each step's
        time when it is `worth_telling`."""
        told = interval_s
        while not stopped.is_set():
            started = time.monotonic()
            try:
                self.once()
            except (OSError, ValueError) as exc:
                log.warning("envoy-stats %s: %s", self.node, exc)
            took = time.monotonic() - started
            pause = pause_after(interval_s, took)
            period = max(interval_s, took + pause)
            if worth_telling(told, period, interval_s):
                told = period
                steps = ", ".join(f"{step} {s:.1f} s" for step, s in self.took.items())
                log.warning("envoy-stats %s: a sample took %.1f s (%s): sampling every %.0f s",
                            self.node, took, steps, period)  # fmt: skip
            stopped.wait(pause)


MAX_DUTY = 0.1
"""The share of the time sampling may take: at 10,000 listeners a sample costs seconds of
Envoy's main thread, which applies xDS changes too, and of a core here (#18: every 5 s it
held new listeners up by up to 1.5 s)."""
MAX_INTERVAL_S = 30.0
"""Never further apart than this: a node's view of its hosts is dropped as stale after
`envoyhosts.DEFAULT_MAX_AGE_S`."""


def worth_telling(told: float, period: float, interval_s: float) -> bool:
    """Whether a sampling period is worth a log line, after `told` was the last one logged:
    it left `interval_s` or came back to it, or it halved or doubled."""
    return (period > interval_s) != (told > interval_s) or not told / 2 < period < told * 2


def pause_after(interval_s: float, took_s: float) -> float:
    """How long to wait after a sample that took `took_s`: the next starts `interval_s`
    after this one began, or later so sampling takes at most `MAX_DUTY` of the time (but
    no later than `MAX_INTERVAL_S`)."""
    period = min(max(interval_s, took_s / MAX_DUTY), max(interval_s, MAX_INTERVAL_S))
    return max(0.0, period - took_s)
