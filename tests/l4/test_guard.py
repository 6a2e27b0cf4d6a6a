"""The VIP guard against real IPVS and real nftables in the lab VM.

A server of the node's own, bound to every address (as sshd is), answers on the node's
address but not on the VIPs; the listeners' ports on the VIPs reach the real servers; a
listener's port closes once it is removed. Without the guard the node's server would
answer on every VIP, and on port 80 of the VIP once IPVS no longer takes it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.netns import (
    CLIENT_SOURCES,
    TCP_PORT,
    UDP_PORT,
    Topology,
    open_connection,
    tally_udp,
)
from l4.agent import L4Agent
from l4.drivers.nft import NftDriver
from l4.firewall import Openings, load_script, update_script
from slb.snapshot import Delete
from slb.storage.store import Store
from slb.storage.timeseries import RATE_LIMITED_CONNECTIONS_PER_SECOND, TimeSeries
from tests.l4.conftest import INTERFACE, AgentFactory
from tests.l4.test_firewall import GOLDEN, SHIPPED, case_openings

pytestmark = pytest.mark.lab

VIP, VIP6 = "198.18.0.10", "2001:2::10"
NODE_ADDRESS, NODE_ADDRESS6 = "198.18.10.1", "2001:2:10::1"
"""The node as the client namespace reaches it: its management address here."""
NODE_PORT = 2222
"""Where the node's own server listens, as sshd would on 22."""
SERVERS = ("rs1", "rs2", "rs3")
DROPPED = "timed out"
WAIT_S = 3.0
"""How long a probe waits: an answer comes in milliseconds, a dropped SYN never."""


class RecordingNft(NftDriver):
    """nft as the agent runs it, noting each script and the VIPs bound when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, str]] = []

    def run(self, script: str) -> None:
        self.runs.append((script, bound_vips()))
        super().run(script)


def bound_vips() -> str:
    return subprocess.run(
        ["ip", "-o", "addr", "show", "dev", INTERFACE], capture_output=True, text=True, check=False
    ).stdout


def reach(address: str, port: int, source: str | None = None) -> str:
    """Connect (from local address `source`, if given) and read a line: what answered,
    `refused`, or `timed out` (dropped)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT_S)
        if source is not None:
            sock.bind((source, 0))
        try:
            sock.connect((address, port))
            return sock.makefile().readline().strip()
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return DROPPED


def burst(address: str, port: int, count: int, wait_s: float = 0.6) -> Counter[str]:
    """`count` connections started at once: how many were `connected`, `refused` or
    `timed out` after `wait_s` (under the 1 s after which a dropped SYN is sent again)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((address, port))
        sockets.append(sock)
    deadline = time.monotonic() + wait_s
    pending = set(sockets)
    while pending and (left := deadline - time.monotonic()) > 0:
        _, done, _ = select.select([], list(pending), [], left)
        pending -= set(done)
    outcome: Counter[str] = Counter()
    for sock in sockets:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        outcome[DROPPED if sock in pending else "connected" if error == 0 else "refused"] += 1
        sock.close()
    return outcome


def ping(address: str) -> bool:
    """One ICMP echo request (a raw socket: no ping binary needed); True if answered."""
    ident, payload = os.getpid() & 0xFFFF, b"openslb guard!"  # even length, for the checksum
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    total = sum(struct.unpack(f"!{len(header + payload) // 2}H", header + payload))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    packet = struct.pack("!BBHHH", 8, 0, checksum, ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(WAIT_S)
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + WAIT_S
        for _ in range(100):  # other ICMP may arrive; bounded in count and time
            if time.monotonic() > deadline:
                return False
            try:
                data, (peer, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            start = (data[0] & 0x0F) * 4
            kind, _, _, answered_id, _ = struct.unpack("!BBHHH", data[start : start + 8])
            if (kind, answered_id, peer) == (0, ident, address):
                return True
    return False


class NodeServer:
    """A server of the node's own on [::] (every address, both families), answering `node`."""

    def __init__(self, ports: tuple[int, ...]) -> None:
        self.sockets = []
        for port in ports:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            sock.listen(16)
            self.sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        while True:  # ends when the socket is closed
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"node\n")

    def close(self) -> None:
        """Shut down first: that wakes the accepting thread, which a close alone does not."""
        for sock in self.sockets:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def node_server(topology: Topology) -> Iterator[NodeServer]:
    """Port 80 too: once IPVS no longer takes VIP:80, only the guard keeps this off it."""
    server = NodeServer((80, NODE_PORT))
    yield server
    server.close()


@pytest.fixture
def guarded(agent_factory: AgentFactory) -> tuple[L4Agent, RecordingNft]:
    agent = agent_factory()
    agent.firewall = nft = RecordingNft()
    return agent, nft


def desired_state(store: Store, topology: Topology) -> int:
    """VIP: TCP 80 and UDP 53 (which keeps the VIP bound when 80 goes); VIP6: TCP 80."""
    v4 = [(topology.v4(name), TCP_PORT, 1) for name in SERVERS]
    v6 = [(topology.v6(name), TCP_PORT, 1) for name in SERVERS]
    dns = [(topology.v4(name), UDP_PORT, 1) for name in SERVERS]
    return put(
        store,
        node_group(("lb-a", "198.18.255.15")),
        load_balancer(VIP),
        load_balancer(VIP6, name="public6"),
        listener("web", 80),
        listener("dns", 53, protocol="UDP", app="dns"),
        listener("web6", 80, lb="public6", app="web6"),
        service("web", v4),
        service("dns", dns, app="dns", protocol="UDP"),
        service("web6", v6, app="web6", lb="public6"),
    )


def test_only_the_listeners_ports_are_open_on_the_vips(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft], node_server: NodeServer
) -> None:
    agent, nft = guarded
    client = topology.client
    assert agent.sync_to(desired_state(store, topology)).errors == []
    (script, bound_then), *more = nft.runs
    assert more == [], "one nft transaction for the first apply"
    assert script.startswith("table inet openslb_guard\ndelete table inet openslb_guard\n")
    assert VIP not in bound_then, "the VIP is guarded before it is bound"

    assert client.call(reach, VIP, 80) in SERVERS
    assert client.call(reach, VIP6, 80) in SERVERS
    assert sorted(client.call(tally_udp, VIP, 53, 3, 22010)) == sorted(SERVERS)
    assert client.call(reach, VIP, NODE_PORT) == DROPPED, "the node's own server on a VIP"
    assert client.call(reach, VIP6, NODE_PORT) == DROPPED
    assert client.call(reach, NODE_ADDRESS, NODE_PORT) == "node", "management address"
    assert client.call(reach, NODE_ADDRESS6, NODE_PORT) == "node"
    assert client.call(ping, VIP), "ping to a VIP passes"

    gone = store.apply([Delete("Listener", "web")])
    assert agent.sync_to(gone).errors == []
    assert f"inet {VIP}/32" in bound_vips(), "UDP 53 keeps the VIP"
    assert client.call(reach, VIP, 80) == DROPPED, "a removed listener's port closes"
    assert client.call(reach, NODE_ADDRESS, 80) == "node"
    assert client.call(reach, VIP6, 80) in SERVERS
    assert sorted(client.call(tally_udp, VIP, 53, 3, 22020)) == sorted(SERVERS)
    closing = nft.runs[-1][0]
    assert closing == f"delete element inet openslb_guard listeners4 {{ {VIP} . tcp . 80 }}\n", (
        "only what changed, not the table")  # fmt: skip

    assert agent.sync().errors == []
    assert len(nft.runs) == 2, "nothing to change: no nft run"


def test_a_listeners_allowed_and_denied_networks_decide_who_connects(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft], node_server: NodeServer
) -> None:
    """#17 item 2: clients at three addresses of the client namespace; the listener allows
    the first and third and denies the third (a deny wins). Opening it lets the second in."""
    agent, nft = guarded
    client = topology.client
    allowed, other, denied = CLIENT_SOURCES[0], CLIENT_SOURCES[1], CLIENT_SOURCES[2]
    desired_state(store, topology)
    revision = put(store, listener("web", 80, allowed_sources=[f"{allowed}/32", f"{denied}/32"],
                                   denied_sources=[f"{denied}/32"]))  # fmt: skip
    assert agent.sync_to(revision).errors == []
    assert client.call(reach, VIP, 80, allowed) in SERVERS
    assert client.call(reach, VIP, 80, other) == DROPPED
    assert client.call(reach, VIP, 80, denied) == DROPPED
    assert f"{VIP} . tcp . 80 . {denied}" in nft.runs[-1][0]

    opened = put(store, listener("web", 80, denied_sources=[f"{denied}/32"]))
    assert agent.sync_to(opened).errors == []
    assert nft.runs[-1][0].startswith("delete element"), "only what changed"
    assert client.call(reach, VIP, 80, other) in SERVERS
    assert client.call(reach, VIP, 80, denied) == DROPPED
    udp = client.call(tally_udp, VIP, 53, 3, 22030)
    assert sorted(udp) == sorted(SERVERS), "other ports untouched"


def test_a_tcp_listeners_limits_hold_in_ipvs_and_in_the_guard(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft]
) -> None:
    """#17 item 3 at L4. max_connections 3 over three real servers is an upper threshold of
    one each: three connections (held, or closed and still counted by IPVS) fill them and
    the fourth is refused; raised to 6, three more get in. connections_per_second 5: of 20
    connections started at once, the bucket's 5 (and what refills meanwhile) get in, the
    rest are dropped, and the drops are charted per second."""
    agent, nft = guarded
    client = topology.client
    desired_state(store, topology)
    capped = put(store, listener("web", 80, limits={"max_connections": 3}))
    assert agent.sync_to(capped).errors == []
    held = [client.call(open_connection, VIP, 80) for _ in range(2)]
    assert client.call(reach, VIP, 80) in SERVERS  # closed: counted until IPVS forgets it
    assert all(name in SERVERS for _, name in held), "two held open"
    assert client.call(reach, VIP, 80) == "refused", "every real server at its threshold"
    udp = client.call(tally_udp, VIP, 53, 3, 22040)
    assert sorted(udp) == sorted(SERVERS), "other ports untouched"

    raised = put(store, listener("web", 80, limits={"max_connections": 6}))
    assert agent.sync_to(raised).errors == []
    assert sorted(client.call(reach, VIP, 80) for _ in range(3)) == sorted(SERVERS)
    assert client.call(reach, VIP, 80) == "refused"
    for sock, _ in held:
        sock.close()

    limited = put(store, listener("web", 80, limits={"connections_per_second": 5}))
    assert agent.sync_to(limited).errors == []
    assert "flush chain inet openslb_guard connection_rates" in nft.runs[-1][0]
    agent.sample_stats()  # the drop counters' starting point
    outcome = client.call(burst, VIP, 80, 20)
    assert 4 <= outcome["connected"] <= 8, outcome
    assert outcome[DROPPED] == 20 - outcome["connected"], outcome
    time.sleep(1.0)  # the bucket refills: a new connection gets in
    assert client.call(reach, VIP, 80) in SERVERS
    agent.sample_stats()
    charts = TimeSeries(store).range(
        RATE_LIMITED_CONNECTIONS_PER_SECOND, 0, time.time() + 1, match={"listener": "web"}
    )
    assert [series.labels["tier"] for series in charts] == ["l4"]
    assert charts[0].points[-1].value > 0, "the drops, as a rate"


def test_a_guard_that_cannot_be_loaded_is_reported_and_traffic_flows(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft], node_server: NodeServer
) -> None:
    agent, _ = guarded
    agent.firewall = NftDriver("/nonexistent/libnftables.so.1")
    revision = desired_state(store, topology)
    report = agent.sync_to(revision)
    assert len(report.errors) == 1
    assert report.errors[0].startswith(
        "VIP guard: /nonexistent/libnftables.so.1 not found: install nftables"
    )
    assert report.revision == 0, "not served until the guard is in place"
    assert agent.failed_revision == revision, "retried later"
    assert topology.client.call(reach, VIP, 80) in SERVERS, "IPVS is programmed all the same"

    agent.firewall = NftDriver()
    report = agent.sync()
    assert (report.errors, report.revision) == ([], revision)
    assert topology.client.call(reach, VIP, NODE_PORT) == DROPPED


def test_a_resync_puts_back_a_table_someone_deleted(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft], node_server: NodeServer
) -> None:
    agent, nft = guarded
    agent.sync_to(desired_state(store, topology))
    subprocess.run(["nft", "delete", "table", "inet", "openslb_guard"], check=True)
    assert topology.client.call(reach, VIP, NODE_PORT) == "node", "no guard: the node answers"
    assert agent.resync(reread_store=False).errors == []
    assert nft.runs[-1][0].startswith("table inet openslb_guard\n"), "the whole table again"
    assert topology.client.call(reach, VIP, NODE_PORT) == DROPPED


def test_a_repair_loads_the_table_again_only_if_it_is_not_what_the_agent_loaded(
    store: Store, topology: Topology, guarded: tuple[L4Agent, RecordingNft], node_server: NodeServer
) -> None:
    """The repair reads the table outside the kernel's lock and compares: a table nobody
    touched is left alone (loading 1,000 listeners again held changes up), a changed one is
    loaded whole."""
    agent, nft = guarded
    agent.sync_to(desired_state(store, topology))
    ran = len(nft.runs)
    assert agent.repair().errors == []
    assert nft.runs[ran:] == [], "an intact table is left alone"
    subprocess.run(["nft", "delete", "element", "inet", "openslb_guard", "listeners4",
                    f"{{ {VIP} . tcp . 80 }}"], check=True)  # fmt: skip
    assert topology.client.call(reach, VIP, 80) == DROPPED
    assert agent.repair().errors == []
    assert nft.runs[-1][0].startswith("table inet openslb_guard\n"), "the whole table again"
    assert topology.client.call(reach, VIP, 80) in SERVERS


def test_nft_takes_the_shipped_file_and_every_golden_case(clean_ipvs: None) -> None:
    driver = NftDriver()
    driver.run(SHIPPED.read_text())
    driver.run(SHIPPED.read_text())  # idempotent: replaces the table
    listed = subprocess.run(
        ["nft", "list", "table", "inet", "openslb_guard"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert listed.count("chain input") == 1
    for case in sorted(p.name for p in GOLDEN.iterdir()):
        opened = case_openings(case)
        driver.run(load_script(opened))
        more = opened | Openings(frozenset({"198.18.0.99"}))
        driver.run(update_script(opened, more))
        driver.run(update_script(more, opened))
