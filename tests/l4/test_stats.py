"""Statistics into a real Redis (latest samples, the console's charts) and out as Prometheus."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest

from l4.ipvs import (
    Counters,
    Dest,
    DestStats,
    ServiceKey,
    ServiceStats,
    Stats,
    VirtualService,
)
from l4.stats import IPVSCollector, StatsWriter
from slb.storage.store import Store
from slb.storage.timeseries import BYTES_PER_SECOND, CONNECTIONS, TimeSeries

WEB = ServiceKey("TCP", "198.18.0.10", 80)
DNS = ServiceKey("UDP", "2001:2::53", 53)


def sample(key: ServiceKey, conns: int) -> ServiceStats:
    dest = Dest("198.18.1.1", 8080, 2, "nat")
    return ServiceStats(
        VirtualService(key, "rr", (), 0, (dest,)),
        Stats(conns, 10 * conns, 9 * conns, 1000 * conns, 900 * conns, 1, 2, 3, 4, 5),
        (DestStats(dest, Counters(3, 4, 0), Stats(conns, 1, 2, 3, 4, 5, 6, 7, 8, 9)),),
    )


def test_samples_go_to_redis_and_tcp_udp_listeners_to_the_console_charts(store: Store) -> None:
    writer = StatsWriter(store, "lb-a")
    charted = {WEB: "web"}  # DNS stands for an L7 listener's service: Envoy charts those
    for i in range(5):
        writer.write([sample(WEB, i), sample(DNS, 10 + i)], now=100.0 + i, listeners=charted)
    latest = json.loads(store.redis.hget(writer.latest_key, DNS.encode()) or b"")
    assert latest["conns"] == 14
    assert latest["dests"]["198.18.1.1/8080"]["active"] == 3
    assert latest["dests"]["198.18.1.1/8080"]["weight"] == 2

    charts = TimeSeries(store)
    (connections,) = charts.range(CONNECTIONS, 0, 200, match={"listener": "web"})
    assert connections.labels == {"tier": "l4", "listener": "web", "node": "lb-a"}
    assert [(p.t, p.value) for p in connections.points] == [(100.0 + i, 3.0) for i in range(5)]
    (throughput,) = charts.range(BYTES_PER_SECOND, 0, 200, match={"listener": "web"})
    assert throughput.points[-1].value == 4 + 5  # inbps + outbps
    assert charts.labels(CONNECTIONS) == [{"listener": "web", "node": "lb-a", "tier": "l4"}]

    writer.write([sample(WEB, 9)], now=200.0, listeners=charted)
    assert store.redis.hget(writer.latest_key, DNS.encode()) is None


def test_prometheus_exposition_has_service_and_real_server_metrics() -> None:
    collector = IPVSCollector("lb-a")
    registry = CollectorRegistry()
    registry.register(collector)
    collector.update([sample(WEB, 7)])
    text = generate_latest(registry).decode()
    service = 'node="lb-a",port="80",protocol="TCP",vip="198.18.0.10"'
    assert f"openslb_ipvs_service_conns_total{{{service}}} 7.0" in text
    assert f"openslb_ipvs_service_inbytes_total{{{service}}} 7000.0" in text
    assert f"openslb_ipvs_service_cps{{{service}}} 1.0" in text
    real = 'node="lb-a",port="80",protocol="TCP",real_port="8080",real_server="198.18.1.1",'
    real += 'vip="198.18.0.10"'
    assert f"openslb_ipvs_real_server_active{{{real}}} 3.0" in text
    assert f"openslb_ipvs_real_server_weight{{{real}}} 2.0" in text
    assert f"openslb_ipvs_real_server_inactive{{{real}}} 4.0" in text
    assert 'openslb_l4_store_held{node="lb-a"} 0.0' in text


def test_the_agent_says_when_it_holds_its_last_good_state() -> None:
    holding = [True]
    registry = CollectorRegistry()
    registry.register(IPVSCollector("lb-a", held=lambda: holding[0]))
    assert 'openslb_l4_store_held{node="lb-a"} 1.0' in generate_latest(registry).decode()
    holding[0] = False
    assert 'openslb_l4_store_held{node="lb-a"} 0.0' in generate_latest(registry).decode()
