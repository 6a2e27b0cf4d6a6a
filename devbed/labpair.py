"""Two LB nodes sharing a VIP with VRRP, in network namespaces of the lab VM.

Each node runs what a Vagrant LB node runs, configured by the files in deploy/lb-node/:
the sysctl file, keepalived with the packaged top-level configuration (including the file
the agent writes), and the l4 agent (`slb l4-agent`, the same engine as the node's worker)
with VRRP and IPVS connection sync on. Redis is reached through its Unix socket, which
every namespace sees.

    client 198.18.30.100 --+                 +-- 198.18.32.21 rs1 (default via .1)
    lb1 eth0 198.18.30.11 -+- fo-front       +-- 198.18.32.22 rs2
    lb2 eth0 198.18.30.12 -+    fo-back -----+-- lb1 eth1 198.18.32.11, lb2 eth1 .12
    VIP 198.18.30.10 and the real servers' gateway 198.18.32.1 live on the MASTER.

The TCP listener (port 8080, NAT) reaches the real servers; the HTTP listener (port 80)
goes, as every L7 listener does, by direct routing to the group's Envoys: stand-ins here
(a server on :80 answering its node's name, /ready on :9902 for the group's envoy_check),
since what is measured is the IPVS tier's side of a failover.

A node "dies" as a machine does: its keepalived and agent are killed and its links go
down. It "boots" again with clean interfaces, and a new agent and keepalived.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devbed.desired import listener, load_balancer, node_group, put, service
from devbed.labnode import ipvs_weights
from devbed.netns import NameServer, Netns, sh
from devbed.process import Process, wait_until
from slb.model import HealthCheck, StoredObject
from slb.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
LB_NODE = ROOT / "deploy" / "lb-node"
SLB = str(Path(sys.executable).with_name("slb"))

VIP = "198.18.30.10"
PORT = 8080
L7_PORT = 80
READY_PORT = 9902
ENVOY_CHECK = {"type": "http", "path": "/ready", "port": READY_PORT, "interval_s": 1,
               "timeout_s": 1, "healthy_threshold": 2, "unhealthy_threshold": 2}  # fmt: skip
GATEWAY = "198.18.32.1"
GROUP = "lab"
CLIENT = "198.18.30.100"
NODES = {"lb1": ("198.18.30.11", "198.18.32.11", 150), "lb2": ("198.18.30.12", "198.18.32.12", 100)}
SERVERS = {"rs1": "198.18.32.21", "rs2": "198.18.32.22"}


def desired_state(store: Store, vips: tuple[str, ...] = (VIP,)) -> int:
    """The pair's node group (its Envoys checked), a TCP listener on each VIP across the real
    servers, and an HTTP listener on the first."""
    group = node_group(*((n, a[0]) for n, a in NODES.items()), name=GROUP)
    objects: list[StoredObject] = [
        group.model_copy(update={"envoy_check": HealthCheck.model_validate(ENVOY_CHECK)}),
        listener("site", L7_PORT, protocol="HTTP", lb="lb0", app="app0"),
    ]
    for index, vip in enumerate(vips):
        lb, app = f"lb{index}", f"app{index}"
        objects += [
            load_balancer(vip, name=lb, group=GROUP),
            listener(f"tcp{index}", PORT, lb=lb, app=app),
            service(f"svc{index}", [(a, PORT, 1) for a in SERVERS.values()], app=app, lb=lb),
        ]
    return put(store, *objects)


@dataclass
class LBNode:
    name: str
    netns: Netns
    state_dir: Path
    keepalived: Process | None = None
    agent: Process | None = None
    alive: bool = True

    def holds(self, address: str, interface: str = "eth0") -> bool:
        shown = subprocess.run(
            ["ip", "-n", self.netns.name, "-o", "addr", "show", "dev", interface],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return f"inet {address}/" in shown


class LBPair:
    def __init__(self, state_dir: Path, store: Store, redis_url: str) -> None:
        self.state_dir, self.store, self.redis_url = state_dir, store, redis_url
        sh("modprobe", "ip_vs")
        for bridge in ("fo-front", "fo-back"):
            sh("ip", "link", "add", bridge, "type", "bridge")
            sh("ip", "link", "set", bridge, "up")
        self.client = Netns("fo-client")
        self._attach(self.client, "fo-c", "fo-front", "eth0", f"{CLIENT}/24")
        self.servers: dict[str, NameServer] = {}
        for name, address in SERVERS.items():
            netns = Netns(f"fo-{name}")
            self._attach(netns, f"fo-{name}", "fo-back", "eth0", f"{address}/24")
            netns.ip("route", "add", "default", "via", GATEWAY)
            self.servers[name] = NameServer(netns, name, (PORT,)).start()
        self.nodes: dict[str, LBNode] = {}
        self.envoys: dict[str, NameServer] = {}  # stand-ins: each answers its node's name
        self.ready: dict[str, http.server.HTTPServer] = {}
        for name, (front, back, _) in NODES.items():
            netns = Netns(f"fo-{name}")
            self._attach(netns, f"fo-{name}f", "fo-front", "eth0", f"{front}/24")
            self._attach(netns, f"fo-{name}b", "fo-back", "eth1", f"{back}/24")
            sh("ip", "netns", "exec", netns.name, "sysctl", "-q", "-p",
               str(LB_NODE / "sysctl.d" / "90-openslb.conf"))  # fmt: skip
            self.nodes[name] = LBNode(name, netns, state_dir / name)
            self.envoys[name] = NameServer(netns, name, (L7_PORT,)).start()
            self.ready[name] = netns.call(_serve_ready)

    @staticmethod
    def _attach(netns: Netns, root_side: str, bridge: str, inside: str, address: str) -> None:
        sh("ip", "link", "add", root_side, "type", "veth", "peer", "name", inside, "netns",
           netns.name)  # fmt: skip
        sh("ip", "link", "set", root_side, "master", bridge, "up")
        netns.ip("addr", "add", address, "dev", inside)
        netns.ip("link", "set", inside, "up")

    # -- a node's life ---------------------------------------------------------------------

    def boot(self, name: str, *, conn_sync: bool = True) -> None:
        """Start the node's keepalived, then its agent, as the node's units would."""
        node = self.nodes[name]
        node.state_dir.mkdir(parents=True, exist_ok=True)
        self._start_keepalived(node)
        priority = NODES[name][2]
        peers = [front for other, (front, _, _) in NODES.items() if other != name]
        include = node.state_dir / "openslb.conf"
        env = {
            "OPENSLB_CONFIG": "",
            "OPENSLB_REDIS_URL": self.redis_url,
            "OPENSLB_REDIS_PREFIX": self.store.prefix,
            "OPENSLB_L4_INTERFACE": "slb0",
            "OPENSLB_L4_STATE_DIR": str(node.state_dir),
            "OPENSLB_L4_METRICS_LISTEN": "",
            "OPENSLB_L4_VRRP_CONFIG": str(include),
            "OPENSLB_L4_VRRP_INTERFACE": "eth0",
            "OPENSLB_L4_VRRP_PRIORITY": str(priority),
            "OPENSLB_L4_VRRP_PEERS": ",".join(peers),
            "OPENSLB_L4_VRRP_GATEWAY": f"{GATEWAY}/24 dev eth1",
            "OPENSLB_L4_VRRP_PIDFILE": str(node.state_dir / "keepalived.pid"),
            "OPENSLB_L4_CONN_SYNC_INTERFACE": "eth1" if conn_sync else "",
        }
        node.agent = Process(
            f"agent-{name}",
            ["ip", "netns", "exec", node.netns.name, SLB, "l4-agent", "--node", name],
            node.state_dir, env,
        ).start()  # fmt: skip

    def _start_keepalived(self, node: LBNode) -> None:
        """keepalived with the packaged top-level file, including what the agent writes."""
        name = node.name
        include = node.state_dir / "openslb.conf"
        base = (LB_NODE / "keepalived.conf").read_text()
        assert "/etc/keepalived/openslb.conf" in base, "keepalived.conf must include the agent's"
        (node.state_dir / "keepalived.conf").write_text(
            base.replace("/etc/keepalived/openslb.conf", str(include))
        )
        for stale in ("keepalived.pid", "vrrp.pid"):  # a killed keepalived leaves them
            (node.state_dir / stale).unlink(missing_ok=True)
        node.keepalived = Process(
            f"keepalived-{name}",
            ["ip", "netns", "exec", node.netns.name, "keepalived", "--dont-fork", "--log-console",
             "--vrrp", "-f", str(node.state_dir / "keepalived.conf"),
             "-p", str(node.state_dir / "keepalived.pid"),
             "-r", str(node.state_dir / "vrrp.pid")],
            node.state_dir,
        ).start()  # fmt: skip
        wait_until(
            lambda: node.keepalived is not None
            and node.keepalived.check_alive()
            and (node.state_dir / "keepalived.pid").exists(),
            30, f"keepalived on {name}",
        )  # fmt: skip

    def kill(self, name: str, *, agent: bool = True) -> None:
        """The node dies: nothing it runs says goodbye, and its links go dark.

        `agent=False` leaves its agent running, cut off (repeated trials: a new agent would
        wait out the old one's lock).
        """
        node = self.nodes[name]
        for process in (node.keepalived, node.agent if agent else None):
            if process is not None:
                process.stop(sig=signal.SIGKILL)
        node.netns.ip("link", "set", "eth0", "down")
        node.netns.ip("link", "set", "eth1", "down")
        node.alive = False

    def revive(self, name: str, *, agent: bool = True, conn_sync: bool = True) -> None:
        """The node boots again: clean interfaces (what VRRP added is gone), links up.

        Booting takes longer than the dead agent's node lock lives (30 s), so the new agent
        finds it gone; this waits for that instead of booting a machine.
        """
        node = self.nodes[name]
        if agent:
            lock = self.store.key("l4", name, "lock")
            wait_until(lambda: not self.store.redis.exists(lock), 40, f"{name}'s old agent lock")
        for interface, own in (("eth0", NODES[name][0]), ("eth1", NODES[name][1])):
            node.netns.ip("addr", "flush", "dev", interface)
            node.netns.ip("addr", "add", f"{own}/24", "dev", interface)
            node.netns.ip("link", "set", interface, "up")
        node.alive = True
        if not agent:
            self._start_keepalived(node)
            return
        self.stop_conn_sync(name)
        self.boot(name, conn_sync=conn_sync)

    def stop_conn_sync(self, name: str) -> None:
        for role in ("master", "backup"):
            subprocess.run(["ip", "netns", "exec", self.nodes[name].netns.name, "ipvsadm",
                            "--stop-daemon", role], capture_output=True, check=False)  # fmt: skip

    def l7_weights(self, name: str) -> dict[str, int]:
        """The node's IPVS weights of the HTTP listener's real servers (the Envoys)."""
        shown = subprocess.run(
            ["ip", "netns", "exec", self.nodes[name].netns.name, "ipvsadm", "-Ln", "-t",
             f"{VIP}:{L7_PORT}"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return {dest.rpartition(":")[0]: weight for dest, weight in ipvs_weights(shown).items()}

    def connections(self, name: str) -> str:
        """The node's IPVS connection table and sync daemons, as ipvsadm shows them."""
        netns = self.nodes[name].netns.name
        shown = [
            subprocess.run(["ip", "netns", "exec", netns, "ipvsadm", *args],
                           capture_output=True, text=True, check=False).stdout
            for args in (["-Lnc"], ["-L", "--daemon"])
        ]  # fmt: skip
        return "".join(shown)

    def synced_since(self, name: str, moment: float) -> bool:
        """Whether the node's agent has reported a sync since `moment` (wall clock)."""
        raw = self.store.redis.get(self.store.key("l4", name, "report"))
        return raw is not None and json.loads(raw)["updated_at"] > moment

    def master(self) -> str | None:
        """The live node that holds the VIP on its network interface (the VRRP MASTER)."""
        holders = [n for n, node in self.nodes.items() if node.alive and node.holds(VIP)]
        return holders[0] if len(holders) == 1 else None

    def elections_won(self) -> int:
        """How many times any node's keepalived has entered MASTER state so far."""
        return sum(
            node.keepalived.log_path.read_text(errors="replace").count("Entering MASTER STATE")
            for node in self.nodes.values()
            if node.keepalived is not None and node.keepalived.log_path.exists()
        )

    def failing(self, name: str) -> list[str]:
        """The failing checks the node's agent last reported, each with its reason."""
        raw = self.store.redis.get(self.store.key("l4", name, "report"))
        return list(json.loads(raw)["failing"]) if raw else []

    def wait_master(self, timeout: float = 90.0) -> str:
        try:
            wait_until(lambda: self.master() is not None, timeout, "a VRRP MASTER with the VIP")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnosis()}") from None
        master = self.master()
        assert master is not None
        return master

    def diagnosis(self) -> str:
        """What each node's keepalived and agent said, and the file the agent wrote."""
        parts = []
        for name, node in self.nodes.items():
            include = node.state_dir / "openslb.conf"
            written = include.read_text() if include.exists() else "(not written)"
            parts.append(f"--- {name}: {include.name}\n{written}")
            for process in (node.keepalived, node.agent):
                if process is not None:
                    parts.append(f"--- {name}: {process.name}\n{process.log_tail(40)}")
        return "\n".join(parts)

    def close(self) -> None:
        for name, node in self.nodes.items():
            self.envoys[name].stop()
            self.ready[name].shutdown()
            self.ready[name].server_close()
            for process in (node.keepalived, node.agent):
                if process is not None:
                    process.stop()
            node.netns.delete()
        self.client.delete()
        for server in self.servers.values():
            server.stop()
            server.netns.delete()
        for bridge in ("fo-front", "fo-back"):
            subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)

    # -- the client ------------------------------------------------------------------------

    def ask(self, vip: str = VIP, timeout: float = 0.5, port: int = PORT) -> str:
        """One call through the VIP from the client: the name of who answered."""
        return self.client.call(_ask, vip, timeout, port)

    def answers(self, vip: str = VIP) -> bool:
        """Whether a call through `vip` gets a real server's answer now."""
        try:
            return self.ask(vip, timeout=1.0) in SERVERS
        except OSError:
            return False

    def l7_answered_by_only(self, node: str, timeout: float = 1.0) -> bool:
        """Whether 8 HTTP calls through the VIP, each given `timeout`, are all answered by
        `node`'s Envoy."""
        try:
            return {self.ask(VIP, timeout, L7_PORT) for _ in range(8)} == {node}
        except OSError:
            return False

    def first_answer_after(self, started: float, limit: float = 30.0) -> float:
        """Call the VIP until it answers (a new call every 0.1 s at most); seconds from
        `started` to that answer."""
        deadline = started + limit
        while time.monotonic() < deadline:
            try:
                self.ask(timeout=0.1)
                return time.monotonic() - started
            except OSError:
                time.sleep(0.01)
        raise TimeoutError(f"no answer through {VIP}:{PORT} within {limit:.0f} s")

    def open_connection(self) -> socket.socket:
        """An established connection through the VIP, its greeting read."""
        return self.client.call(_open, VIP)


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve_ready() -> http.server.HTTPServer:
    """Envoy's /ready on the stats port, for the group's envoy_check (in the node's netns)."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", READY_PORT), _Ready)  # noqa: S104
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ask(vip: str, timeout: float, port: int = PORT) -> str:
    with socket.create_connection((vip, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        return sock.makefile().readline().strip()


def _open(vip: str) -> socket.socket:
    sock = socket.create_connection((vip, PORT), timeout=5)
    sock.settimeout(5)
    greeting = b""
    while not greeting.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before the greeting")
        greeting += chunk
    return sock


def echoes(sock: socket.socket, payload: bytes = b"still here\n", timeout: float = 10.0) -> bool:
    """Whether an established connection still carries data both ways."""
    try:
        sock.settimeout(timeout)
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(len(payload) - len(received))
            if not chunk:
                return False
            received += chunk
        return received == payload
    except OSError:
        return False
