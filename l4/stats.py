"""Traffic statistics: from the driver to Redis (for the console) and to Prometheus.

Per virtual service and per real server: connections, packets and bytes in and out
(counters since the service was made) and the kernel's rate estimates (per second).

Redis:
  P:l4:NODE:stats    hash, service key -> JSON of the latest sample: the service's numbers
                     and each real server's (weight, forwarding, connections, counters);
                     services that disappear lose their entry at the next write
  slb.storage.timeseries     per TCP/UDP listener and node (labels tier=l4, listener, node): active
                     connections and bytes per second, the console's charts, bounded there;
                     new connections dropped by the listener's connections_per_second,
                     per second (from the VIP guard's counters).
                     HTTP, HTTPS and GRPC listeners are charted from Envoy (tier l7), which
                     sees the same connections and the requests too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from l4.ipvs import ServiceKey, ServiceStats, Stats
from slb.storage.store import Store
from slb.storage.timeseries import (
    BYTES_PER_SECOND,
    CONNECTIONS,
    IDLE_EVERY_S,
    RATE_LIMITED_CONNECTIONS_PER_SECOND,
    TimeSeries,
)

COUNTERS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
RATES = ("cps", "inpps", "outpps", "inbps", "outbps")


def sample_json(entry: ServiceStats, now: float) -> str:
    dests = {
        f"{d.dest.address}/{d.dest.port}": {
            "weight": d.dest.weight,
            "forwarding": d.dest.forwarding,
            "active": d.counters.active,
            "inactive": d.counters.inactive,
            "persistent": d.counters.persistent,
            **d.stats._asdict(),
        }
        for d in entry.dests
    }
    return json.dumps(
        {
            "time": now,
            "scheduler": entry.service.scheduler,
            **entry.stats._asdict(),
            "dests": dests,
        },
        separators=(",", ":"),
    )


class StatsWriter:
    def __init__(self, store: Store, node: str) -> None:
        self.store = store
        self.node = node
        self.latest_key = store.key("l4", node, "stats")
        self.timeseries = TimeSeries(store, idle_every_s=IDLE_EVERY_S)
        self._drops: dict[ServiceKey, tuple[float, int]] = {}
        """The rate-limit drop counters at the previous sample, and when it was taken."""

    def write(
        self,
        entries: Sequence[ServiceStats],
        now: float,
        listeners: Mapping[ServiceKey, str],
        drops: Mapping[ServiceKey, int] | None = None,
    ) -> None:
        """One sample of every service; chart points for the TCP/UDP listeners in `listeners`,
        with the rate of `drops` (counters of new connections dropped) since the last one."""
        names = {e.service.key.encode(): e for e in entries}
        known = {k.decode() for k in self.store.redis.hkeys(self.latest_key)}
        pipe = self.store.redis.pipeline(transaction=False)
        for name, entry in names.items():
            pipe.hset(self.latest_key, name, sample_json(entry, now))
        for name in known - names.keys():
            pipe.hdel(self.latest_key, name)
        pipe.execute()
        points = []
        for entry in entries:
            listener = listeners.get(entry.service.key)
            if listener is None:
                continue
            labels = {"tier": "l4", "listener": listener, "node": self.node}
            active = sum(d.counters.active for d in entry.dests)
            points.append((CONNECTIONS, labels, float(active)))
            points.append((BYTES_PER_SECOND, labels, float(entry.stats.inbps + entry.stats.outbps)))
            dropped = (drops or {}).get(entry.service.key)
            if dropped is not None:
                before = self._drops.get(entry.service.key)
                if before is not None and now > before[0]:
                    rate = max(dropped - before[1], 0) / (now - before[0])  # 0: chain rewritten
                    points.append((RATE_LIMITED_CONNECTIONS_PER_SECOND, labels, rate))
        self._drops = {key: (now, n) for key, n in (drops or {}).items()}
        if points:
            self.timeseries.append_many(points, now)


class IPVSCollector(Collector):
    """Prometheus metrics from the latest sample the agent took (no kernel read per scrape)."""

    def __init__(self, node: str, held: Callable[[], bool] = lambda: False) -> None:
        self.node = node
        self.held = held
        """Whether the agent keeps its last good state now (`slb.integrity`)."""
        self._lock = threading.Lock()
        self._entries: Sequence[ServiceStats] = ()

    def update(self, entries: Sequence[ServiceStats]) -> None:
        with self._lock:
            self._entries = entries

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        with self._lock:
            entries = self._entries
        service_labels = ["node", "protocol", "vip", "port"]
        dest_labels = [*service_labels, "real_server", "real_port"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for scope, labels in (("service", service_labels), ("real_server", dest_labels)):
            for name in COUNTERS:
                families[f"{scope}_{name}"] = CounterMetricFamily(
                    f"openslb_ipvs_{scope}_{name}", _HELP[name], labels=labels
                )
            for name in RATES:
                families[f"{scope}_{name}"] = GaugeMetricFamily(
                    f"openslb_ipvs_{scope}_{name}", _HELP[name], labels=labels
                )
        for name, doc in (
            ("active", "Active connections"),
            ("inactive", "Inactive connections (closing, or UDP)"),
            ("persistent", "Persistence templates pointing at the real server"),
            ("weight", "Weight in force (0: drained or failing its health check)"),
        ):
            families[f"real_server_{name}"] = GaugeMetricFamily(
                f"openslb_ipvs_real_server_{name}", doc, labels=dest_labels
            )
        for entry in entries:
            key = entry.service.key
            labels = [self.node, key.protocol, key.address, str(key.port)]
            _add(families, "service", labels, entry.stats)
            for dest in entry.dests:
                dest_values = [*labels, dest.dest.address, str(dest.dest.port)]
                _add(families, "real_server", dest_values, dest.stats)
                for name, value in (*dest.counters._asdict().items(), ("weight", dest.dest.weight)):
                    families[f"real_server_{name}"].add_metric(dest_values, value)
        yield from families.values()
        held = GaugeMetricFamily(
            "openslb_l4_store_held",
            "1 while the agent keeps its last good state: the store is empty, another one, "
            "went back, or would take most of the node's services off (the log says which)",
            labels=["node"],
        )
        held.add_metric([self.node], 1.0 if self.held() else 0.0)
        yield held


def _add(
    families: dict[str, CounterMetricFamily | GaugeMetricFamily],
    scope: str,
    labels: list[str],
    stats: Stats,
) -> None:
    for name, value in stats._asdict().items():
        families[f"{scope}_{name}"].add_metric(labels, value)


_HELP = {
    "conns": "Connections scheduled",
    "inpkts": "Packets in (client to server)",
    "outpkts": "Packets out (server to client; NAT only)",
    "inbytes": "Bytes in",
    "outbytes": "Bytes out (NAT only)",
    "cps": "Connections per second (kernel estimate)",
    "inpps": "Packets in per second",
    "outpps": "Packets out per second",
    "inbps": "Bytes in per second",
    "outbps": "Bytes out per second",
}
