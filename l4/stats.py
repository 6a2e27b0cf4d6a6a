"""Traffic statistics: from the driver to Redis (for the console) and to Prometheus.

Per virtual service and per real server: connections, packets and bytes in and out
(counters since the service was made) and the kernel's rate estimates (per second).

Redis, under `P:l4:NODE:`:
  stats              hash, service key -> JSON of the latest sample: the service's numbers
                     and each real server's (weight, forwarding, connections, counters)
  series:SERVICEKEY  list, newest first, at most `history` samples of
                     [time, conns, inpkts, outpkts, inbytes, outbytes, cps, inpps, outpps,
                     inbps, outbps]: what the console charts; bounded, so a node's memory
                     in Redis is too
Services that disappear lose their entries at the next write.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cmi.store import Store
from l4.ipvs import ServiceStats, Stats

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
    def __init__(self, store: Store, node: str, history: int) -> None:
        self.store = store
        self.history = history
        self.latest_key = store.key("l4", node, "stats")
        self.series_prefix = store.key("l4", node, "series") + ":"

    def write(self, entries: Sequence[ServiceStats], now: float) -> None:
        """One sample of every service, in one round trip."""
        names = {e.service.key.encode(): e for e in entries}
        stale = set(self._known()) - names.keys()
        pipe = self.store.redis.pipeline(transaction=False)
        for name, entry in names.items():
            pipe.hset(self.latest_key, name, sample_json(entry, now))
            series = self.series_prefix + name
            pipe.lpush(series, json.dumps([round(now, 3), *entry.stats], separators=(",", ":")))
            pipe.ltrim(series, 0, self.history - 1)
        for name in stale:
            pipe.hdel(self.latest_key, name)
            pipe.delete(self.series_prefix + name)
        pipe.execute()

    def _known(self) -> list[str]:
        return [k.decode() for k in self.store.redis.hkeys(self.latest_key)]

    def series(self, service_key: str) -> list[list[float]]:
        raw = self.store.redis.lrange(self.series_prefix + service_key, 0, -1)
        return [json.loads(item) for item in raw]


class IPVSCollector(Collector):
    """Prometheus metrics from the latest sample the agent took (no kernel read per scrape)."""

    def __init__(self, node: str) -> None:
        self.node = node
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
