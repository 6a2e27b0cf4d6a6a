"""Real packets through IPVS in the lab VM: a client namespace, the root as LB node, three
real-server namespaces that answer with their name. The agent programs everything from a
real store; each test sets up its own desired state."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.netns import (
    CLIENT_SOURCES,
    DR_PORT,
    DR_VIPS,
    TCP_PORT,
    UDP_PORT,
    Topology,
    open_connection,
    tally_tcp,
    tally_udp,
)
from devbed.process import wait_until
from devbed.redis import RedisServer
from devbed.relay import Relay
from l4.drivers import Driver
from l4.drivers.nft import NftDriver
from l4.ipvs import ServiceKey
from slb.config import RedisSettings
from slb.model import Listener
from slb.snapshot import Delete
from slb.storage import connect
from slb.storage.store import Store
from slb.storage.timeseries import CONNECTIONS, TimeSeries
from tests.l4.conftest import AgentFactory, following
from tests.l4.test_guard import bound_vips, reach

pytestmark = pytest.mark.lab

VIP = "198.18.0.10"
VIP6 = "2001:2::10"
SERVERS = ("rs1", "rs2", "rs3")


def backends(
    net: Topology, weights: tuple[int, ...] = (1, 1, 1), port: int = TCP_PORT
) -> list[tuple[str, int, int]]:
    return [(net.v4(name), port, w) for name, w in zip(SERVERS, weights, strict=True)]


def serve(store: Store, net: Topology, *objects: object, vip: str = VIP) -> int:
    """The desired state: this node in group `default`, one LB at `vip`, the given objects."""
    return put(store, node_group(("lb-a", "198.18.255.15")), load_balancer(vip), *objects)  # type: ignore[arg-type]


def shares(counts: dict[str, int], total: int) -> dict[str, float]:
    return {name: 100.0 * counts.get(name, 0) / total for name in SERVERS}


@pytest.mark.parametrize("driver_name", ["pyroute2", "ipvsadm"])
def test_rr_spreads_300_connections_evenly(
    store: Store, topology: Topology, agent_factory: AgentFactory, driver_name: str
) -> None:
    agent = agent_factory(driver_name)
    revision = serve(store, topology, listener("web", 80), service("web", backends(topology)))
    assert agent.sync_to(revision).errors == []
    counts = topology.client.call(tally_tcp, VIP, 80, 300)
    for name, share in shares(counts, 300).items():
        assert abs(share - 100 / 3) <= 5, (name, counts)


def test_wrr_honours_weights_1_2_3(
    store: Store, topology: Topology, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    revision = serve(
        store, topology, listener("web", 80, scheduler="wrr"),
        service("web", backends(topology, (1, 2, 3))),
    )  # fmt: skip
    agent.sync_to(revision)
    got = shares(topology.client.call(tally_tcp, VIP, 80, 300), 300)
    for name, weight in zip(SERVERS, (1, 2, 3), strict=True):
        assert abs(got[name] - 100 * weight / 6) <= 5, got


def test_a_gateways_tcp_route_splits_connections_by_its_backend_refs_weights(
    store: Store, topology: Topology, agent_factory: AgentFactory
) -> None:
    """What cmi makes of a TCPRoute with backendRefs `a` (weight 1, one pod) and `b` (weight
    3, two pods): a quarter of the connections to a's pod, three eighths to each of b's."""
    agent = agent_factory()
    rule = {"name": "db", "forward_to": [
        {"service": "lab/a", "target_port": "main", "weight": 1},
        {"service": "lab/b", "target_port": "main", "weight": 3}]}  # fmt: skip
    gateway_listener = Listener.model_validate({
        "name": "gw", "load_balancer": "public", "protocol": "TCP", "port": 5432,
        "scheduler": "wrr", "target_port": 5432, "health_check": None,
        "owner": {"kind": "Gateway", "name": "lab/edge"}, "routes": [rule],
    })  # fmt: skip
    rs1, rs2, rs3 = backends(topology)
    revision = serve(
        store, topology, gateway_listener,
        service("a", [rs1], app="a"), service("b", [rs2, rs3], app="b"),
    )  # fmt: skip
    assert agent.sync_to(revision).errors == []
    got = shares(topology.client.call(tally_tcp, VIP, 5432, 400), 400)
    for name, expected in zip(SERVERS, (25.0, 37.5, 37.5), strict=True):
        assert abs(got[name] - expected) <= 5, got


@pytest.mark.parametrize(
    "extra",
    [
        {"scheduler": "sh"},
        {"scheduler": "rr", "persistence": {"mode": "source_ip", "timeout_s": 60}},
    ],
    ids=["sh", "persistence"],
)
def test_a_client_stays_on_one_server(
    store: Store, topology: Topology, agent_factory: AgentFactory, extra: dict[str, Any]
) -> None:
    agent = agent_factory()
    revision = serve(
        store, topology, listener("web", 80, **extra), service("web", backends(topology))
    )
    agent.sync_to(revision)
    chosen = set()
    for source in CLIENT_SOURCES:
        counts = topology.client.call(tally_tcp, VIP, 80, 20, source)
        assert len(counts) == 1, (source, counts)
        chosen |= set(counts)
    assert chosen <= set(SERVERS)


def test_udp_works(store: Store, topology: Topology, agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    revision = serve(
        store, topology, listener("dns", 53, protocol="UDP", app="dns"),
        service("dns", backends(topology, port=UDP_PORT), app="dns", protocol="UDP"),
    )  # fmt: skip
    agent.sync_to(revision)
    counts = topology.client.call(tally_udp, VIP, 53, 30, 21000)
    assert counts == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_ipv6_works(store: Store, topology: Topology, agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    v6_backends = [(topology.v6(name), TCP_PORT, 1) for name in SERVERS]
    revision = serve(store, topology, listener("web6", 80), service("web6", v6_backends), vip=VIP6)
    assert agent.sync_to(revision).errors == []
    assert topology.client.call(tally_tcp, VIP6, 80, 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


@pytest.mark.parametrize("forwarding", ["nat", "dr", "tun"])
def test_each_forwarding_method_carries_traffic(
    store: Store, topology: Topology, agent_factory: AgentFactory, forwarding: str
) -> None:
    agent = agent_factory()
    vip = DR_VIPS[1]
    revision = serve(
        store, topology, listener("web", DR_PORT, forwarding=forwarding),
        service("web", backends(topology, port=DR_PORT)), vip=vip,
    )  # fmt: skip
    report = agent.sync_to(revision)
    assert report.errors == []
    assert report.problems == []
    assert topology.client.call(tally_tcp, vip, DR_PORT, 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_an_l7_listener_forwards_to_the_envoys_by_direct_routing(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver
) -> None:
    """Stand-in Envoys in rs1 and rs2 (the group's nodes) hold the VIP and answer on :80."""
    agent = agent_factory()
    vip = DR_VIPS[0]
    revision = put(
        store,
        node_group(("lb-a", topology.v4("rs1")), ("lb-b", topology.v4("rs2"))),
        load_balancer(vip),
        listener("site", DR_PORT, protocol="HTTP"),
        service("site", backends(topology, port=TCP_PORT)),
    )
    assert agent.sync_to(revision).errors == []
    programmed = observer.dump().services[ServiceKey("TCP", vip, DR_PORT)]
    assert {(d.address, d.forwarding) for d in programmed.dests} == {
        (topology.v4("rs1"), "dr"), (topology.v4("rs2"), "dr")
    }  # fmt: skip
    counts = topology.client.call(tally_tcp, vip, DR_PORT, 40)
    assert set(counts) == {"rs1", "rs2"}, counts


@pytest.mark.parametrize("driver_name", ["pyroute2", "ipvsadm"])
def test_drain_keeps_an_established_connection_and_sends_new_ones_elsewhere(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver,
    driver_name: str,
) -> None:  # fmt: skip
    agent = agent_factory(driver_name)
    key = ServiceKey("TCP", VIP, 80)
    serve(store, topology, listener("web", 80), service("web", backends(topology)))
    agent.sync()
    conn, leaving = topology.client.call(open_connection, VIP, 80)
    try:
        remaining = [
            b for b, name in zip(backends(topology), SERVERS, strict=True) if name != leaving
        ]
        agent.sync_to(put(store, service("web", remaining)))
        drained = {d.address: d.weight for d in observer.dump([key]).services[key].dests}
        assert drained[topology.v4(leaving)] == 0
        assert len(drained) == 3

        conn.sendall(b"still there?\n")
        assert conn.recv(100) == b"still there?\n"
        counts = topology.client.call(tally_tcp, VIP, 80, 30)
        assert leaving not in counts
        assert sum(counts.values()) == 30

        agent.tick()
        assert len(observer.dump([key]).services[key].dests) == 3, "deleted while in use"
    finally:
        conn.close()

    def gone() -> bool:
        agent.tick()
        return len(observer.dump([key]).services[key].dests) == 2

    wait_until(
        gone,
        timeout=20, what="drained server deleted after its connection closed", interval=0.5,
    )  # fmt: skip
    assert agent.draining == {}


def test_a_removed_listener_drains_its_connections_then_its_port_and_vip_go(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver
) -> None:
    """#17 item 6: a listener removed while a client holds a connection: the connection
    carries on (its real server at weight 0, the VIP and the guard's port kept), nothing new
    reaches a real server, and once it closes the service, its port and its VIP go."""
    agent = agent_factory()
    agent.firewall = NftDriver()
    key = ServiceKey("TCP", VIP, 80)
    serve(store, topology, listener("web", 80), service("web", backends(topology)))
    agent.sync()
    conn, taken = topology.client.call(open_connection, VIP, 80)
    try:
        assert agent.sync_to(store.apply([Delete("Listener", "web")])).errors == []
        left = observer.dump([key]).services[key].dests
        assert [(d.address, d.weight) for d in left] == [(topology.v4(taken), 0)]
        conn.sendall(b"still there?\n")
        assert conn.recv(100) == b"still there?\n"
        assert topology.client.call(reach, VIP, 80) not in SERVERS, "nothing new gets in"
        agent.tick()
        assert key in observer.dump([key]).services, "deleted while in use"
        assert f"inet {VIP}/32" in bound_vips(), "the VIP stays while its connection drains"
    finally:
        conn.close()

    def gone() -> bool:
        agent.tick()
        return key not in observer.dump([key]).services

    wait_until(gone, timeout=20, what="the service deleted once idle", interval=0.5)
    assert agent.draining == {}
    assert f"inet {VIP}/32" not in bound_vips(), "its VIP goes with it"


def test_a_server_coming_back_during_its_drain_gets_its_weight_back(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver
) -> None:
    agent = agent_factory()
    key = ServiceKey("TCP", VIP, 80)
    all_three = service("web", backends(topology, (2, 2, 2)))
    serve(store, topology, listener("web", 80), all_three)
    agent.sync()
    conn, leaving = topology.client.call(open_connection, VIP, 80)
    try:
        remaining = [
            b for b, n in zip(backends(topology, (2, 2, 2)), SERVERS, strict=True) if n != leaving
        ]
        agent.sync_to(put(store, service("web", remaining)))
        assert agent.draining
        agent.sync_to(put(store, all_three))
        weights = {d.address: d.weight for d in observer.dump([key]).services[key].dests}
        assert weights == {topology.v4(n): 2 for n in SERVERS}
        assert agent.draining == {}
    finally:
        conn.close()


def test_health_checks_take_a_stopped_server_out_and_back(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver
) -> None:
    interval, unhealthy, healthy = 1, 2, 2
    check = {"type": "tcp", "interval_s": interval, "timeout_s": 1,
             "unhealthy_threshold": unhealthy, "healthy_threshold": healthy}  # fmt: skip
    agent = agent_factory()
    key = ServiceKey("TCP", VIP, 80)
    serve(
        store, topology, listener("web", 80, health_check=check), service("web", backends(topology))
    )
    agent.sync()
    rs2 = topology.v4("rs2")

    def weight() -> int:
        return {d.address: d.weight for d in observer.dump([key]).services[key].dests}[rs2]

    time.sleep(interval * 1.5)
    assert weight() == 1
    topology.servers["rs2"].stop()
    try:
        took = wait_until(lambda: weight() == 0, timeout=10, what="rs2 at weight 0", interval=0.05)
        assert took <= interval * unhealthy + 0.5
        assert "rs2" not in topology.client.call(tally_tcp, VIP, 80, 12)
        # the report is published after the kernel's weight changes
        wait_until(
            lambda: rs2 in (store.redis.get(agent.report_key) or b"").decode(),
            timeout=5, what="rs2 named in the node's report",
        )  # fmt: skip
    finally:
        topology.servers["rs2"].start()
    took = wait_until(lambda: weight() == 1, timeout=10, what="rs2 back", interval=0.05)
    assert took <= interval * healthy + 0.5


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    """A relay to the test's Redis; set up before the agents, so it outlives them."""
    url = urlsplit(redis_server.url)
    running = Relay((url.hostname or "127.0.0.1", url.port or 6379)).start()
    yield running
    running.stop()


@pytest.mark.parametrize("task_syncing", [False, True], ids=["following", "a-task-syncing"])
def test_health_checks_depool_while_redis_is_black_holed_and_the_agent_catches_up(
    store: Store,
    topology: Topology,
    relay: Relay,
    agent_factory: AgentFactory,
    observer: Driver,
    task_syncing: bool,
) -> None:
    """Redis stops answering without closing (a dead link): the agent's own waits time out,
    its health checks go on depooling, and it applies what it missed once Redis is back.
    `task_syncing`: a sync (a worker's task) is waiting on the link meanwhile."""
    interval, unhealthy = 1, 2
    check = {"type": "tcp", "interval_s": interval, "timeout_s": 1,
             "unhealthy_threshold": unhealthy, "healthy_threshold": 2}  # fmt: skip
    link = RedisSettings(url=f"redis://127.0.0.1:{relay.port}/0", timeout_s=3)
    agent = agent_factory(through=Store(connect.client(link), prefix=store.prefix))
    key = ServiceKey("TCP", VIP, 80)

    def weights() -> dict[str, int]:
        services = observer.dump([key]).services
        return {d.address: d.weight for d in services[key].dests} if key in services else {}

    rs2, rs3 = topology.v4("rs2"), topology.v4("rs3")
    with following(agent):
        serve(store, topology, listener("web", 80, health_check=check),
              service("web", backends(topology)))  # fmt: skip
        wait_until(lambda: weights().get(rs2) == 1, timeout=20, what="web programmed")
        time.sleep(interval * 1.5)
        relay.blackhole()
        retrying = threading.Event()
        if task_syncing:
            threading.Thread(target=_retried, args=(agent.sync, retrying), daemon=True).start()
        time.sleep(1)  # the agent's reads now hang on the link
        topology.servers["rs2"].stop()
        try:
            took = wait_until(lambda: weights()[rs2] == 0, timeout=20, what="rs2 depooled",
                              interval=0.05)  # fmt: skip
            print(f"depooled {took:.2f} s after the server stopped, Redis black-holed")
            assert took <= interval * unhealthy + 1
        finally:
            topology.servers["rs2"].start()
        # The next change too: the first one's report, stuck on the link, holds nothing up.
        took = wait_until(lambda: weights()[rs2] == 1, timeout=20, what="rs2 back", interval=0.05)
        print(f"back {took:.2f} s after the server started, Redis black-holed")
        assert took <= interval * 2 + 1
        put(store, service("web", backends(topology, weights=(1, 1, 3))))  # missed meanwhile
        time.sleep(2)
        assert weights()[rs3] == 1
        retrying.set()
        relay.restore()
        wait_until(lambda: weights()[rs3] == 3, timeout=30, what="the missed revision")


def _retried(call: Callable[[], object], done: threading.Event) -> None:
    """A sync that fails on the dead link, tried again and again as Celery retries a task
    (for a minute at most)."""
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            call()


def test_the_floor_keeps_servers_in_when_most_fail(
    store: Store, topology: Topology, agent_factory: AgentFactory, observer: Driver
) -> None:
    check = {"type": "tcp", "interval_s": 1, "timeout_s": 1, "unhealthy_threshold": 2,
             "healthy_threshold": 2}  # fmt: skip
    agent = agent_factory(healthy_floor=0.5)
    key = ServiceKey("TCP", VIP, 80)
    serve(
        store, topology, listener("web", 80, health_check=check), service("web", backends(topology))
    )
    agent.sync()
    for name in ("rs1", "rs3"):
        topology.servers[name].stop()
    try:
        wait_until(lambda: len(agent.health.down()) == 2, timeout=10, what="two servers down")
        time.sleep(0.5)
        weights = sorted(d.weight for d in observer.dump([key]).services[key].dests)
        assert weights == [0, 1, 1], "ceil(0.5 x 3) = 2 servers must stay in"
    finally:
        for name in ("rs1", "rs3"):
            topology.servers[name].start()


def test_traffic_shows_in_stats(
    store: Store, topology: Topology, agent_factory: AgentFactory
) -> None:
    agent = agent_factory()
    serve(store, topology, listener("web", 80), service("web", backends(topology)))
    agent.sync()
    topology.client.call(tally_tcp, VIP, 80, 9)
    key = ServiceKey("TCP", VIP, 80).encode()

    def latest() -> dict[str, Any]:
        agent.sample_stats()
        raw = store.redis.hget(agent.stats_writer.latest_key, key)
        return dict(json.loads(raw or b"{}"))

    # the kernel folds its per-CPU counters into what it reports every 2 s (estimator)
    wait_until(lambda: latest().get("conns") == 9, timeout=10, what="9 counted", interval=1.0)
    charts = TimeSeries(store).range(CONNECTIONS, 0, time.time() + 1, match={"listener": "web"})
    assert [series.labels["tier"] for series in charts] == ["l4"]
    assert charts[0].points, "a point per sample"
    counted = latest()
    assert sorted(d["conns"] for d in counted["dests"].values()) == [3, 3, 3]
    assert counted["inpkts"] > 0
    assert counted["outbytes"] > 0
