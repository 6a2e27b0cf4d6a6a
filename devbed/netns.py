"""Network namespaces inside the lab VM: a client, three real servers, IPVS in the root.

Each namespace has one thread that entered it with setns(2); a socket made by that
thread lives in the namespace for good, so servers and clients run as threads of the
test process instead of processes (Python starts slowly under emulation).

    client 198.18.10.2-5/24, 2001:2:10::2/64 --veth-- root (IPVS, VIPs on slb0)
    rsN    198.18.2N.2/24,   2001:2:2N::2/64 --veth-- root, N = 1..3
Every real server holds the test VIPs on lo (for DR and TUN) and answers with its name.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

CLIENT_SOURCES = ("198.18.10.2", "198.18.10.3", "198.18.10.4", "198.18.10.5")
DR_VIPS = ("198.18.0.20", "198.18.0.21")
"""VIPs the real servers hold on lo, for direct routing and tunnelling tests."""
TCP_PORT = 8080
UDP_PORT = 5353
DR_PORT = 80


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


class Netns:
    """A namespace made here, or with `existing` one made before; `threads` run in it."""

    def __init__(self, name: str, *, existing: bool = False, threads: int = 1) -> None:
        self.name = name
        if not existing:
            sh("ip", "netns", "add", name)
            self.ip("link", "set", "lo", "up")
        self._thread = ThreadPoolExecutor(threads, initializer=_enter, initargs=(name,))

    def ip(self, *args: str) -> None:
        sh("ip", "-n", self.name, *args)

    def sysctl(self, *settings: str) -> None:
        sh("ip", "netns", "exec", self.name, "sysctl", "-qw", *settings)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` in this namespace (sockets it makes stay here)."""
        return self.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Start `fn` in this namespace, on one of its threads."""
        return self._thread.submit(fn, *args)

    def delete(self) -> None:
        self._thread.shutdown()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class NameServer:
    """TCP and UDP servers in one namespace: a TCP peer gets the name, then an echo."""

    def __init__(self, netns: Netns, name: str, tcp_ports: Iterable[int]) -> None:
        self.netns, self.name = netns, name
        self.tcp_ports = tuple(tcp_ports)
        self._listeners: list[socket.socket] = []
        self.udp = netns.call(self._bind, socket.SOCK_DGRAM, UDP_PORT)
        threading.Thread(target=self._serve_udp, daemon=True).start()

    @staticmethod
    def _bind(kind: int, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(512)
        return sock

    def start(self) -> NameServer:
        for port in self.tcp_ports:
            sock = self.netns.call(self._bind, socket.SOCK_STREAM, port)
            self._listeners.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop accepting (new connections are refused); open ones carry on."""
        for sock in self._listeners:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._listeners = []

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(f"{self.name}\n".encode())
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def _serve_udp(self) -> None:
        while True:
            try:
                _, peer = self.udp.recvfrom(2048)
                self.udp.sendto(self.name.encode(), peer)
            except OSError:
                return


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def ask_tcp(vip: str, port: int, source: str | None = None, timeout: float = 5.0) -> str:
    """Connect, read the server's name, hang up."""
    with socket.socket(_family(vip), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((vip, port))
        return sock.makefile().readline().strip()


def ask_udp(vip: str, port: int, source_port: int = 0, timeout: float = 5.0) -> str:
    with socket.socket(_family(vip), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if source_port:
            sock.bind(("", source_port))  # any address of the family
        sock.sendto(b"who", (vip, port))
        return sock.recv(2048).decode()


def tally_tcp(vip: str, port: int, count: int, source: str | None = None) -> Counter[str]:
    return Counter(ask_tcp(vip, port, source) for _ in range(count))


def tally_udp(vip: str, port: int, count: int, first_source_port: int) -> Counter[str]:
    """Ask `count` times, each from the next source port from `first_source_port` on. IPVS
    keeps a UDP "connection" per client address and port for minutes, so a port the kernel
    happened to pick twice would go back to the same real server: give each call its own
    ports, below the kernel's ephemeral range (32768 and up)."""
    return Counter(ask_udp(vip, port, first_source_port + i) for i in range(count))


def open_connection(vip: str, port: int) -> tuple[socket.socket, str]:
    """A connection kept open, and the name of the server that took it."""
    sock = socket.create_connection((vip, port), timeout=5.0)
    name = b""
    while not name.endswith(b"\n"):
        name += sock.recv(1)
    return sock, name.decode().strip()


class Topology:
    """The namespaces, their addresses and routes, and a name server in each real server."""

    def __init__(self) -> None:
        sh("modprobe", "ipip")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
           "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")  # fmt: skip
        self.client = Netns("client")
        self._link(self.client, "c0", "198.18.10", "2001:2:10")
        for source in CLIENT_SOURCES[1:]:
            self.client.ip("addr", "add", f"{source}/24", "dev", "eth0")
        self.servers: dict[str, NameServer] = {}
        self.addresses: dict[str, tuple[str, str]] = {}
        for n in (1, 2, 3):
            name = f"rs{n}"
            netns = Netns(name)
            self._link(netns, f"r{n}", f"198.18.2{n}", f"2001:2:2{n}")
            sh("sysctl", "-qw", f"net.ipv4.conf.r{n}.accept_local=1")
            netns.ip("link", "set", "tunl0", "up")
            for vip in DR_VIPS:
                netns.ip("addr", "add", f"{vip}/32", "dev", "lo")
                netns.ip("addr", "add", f"{vip}/32", "dev", "tunl0")
            netns.sysctl(
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.tunl0.rp_filter=0",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            )
            self.addresses[name] = (f"198.18.2{n}.2", f"2001:2:2{n}::2")
            self.servers[name] = NameServer(netns, name, (TCP_PORT, DR_PORT)).start()

    @staticmethod
    def _link(netns: Netns, root_side: str, v4: str, v6: str) -> None:
        sh("ip", "link", "add", root_side, "type", "veth", "peer", "name", "eth0", "netns",
           netns.name)  # fmt: skip
        sh("ip", "addr", "add", f"{v4}.1/24", "dev", root_side)
        sh("ip", "addr", "add", f"{v6}::1/64", "dev", root_side, "nodad")
        sh("ip", "link", "set", root_side, "up")
        netns.ip("addr", "add", f"{v4}.2/24", "dev", "eth0")
        netns.ip("addr", "add", f"{v6}::2/64", "dev", "eth0", "nodad")
        netns.ip("link", "set", "eth0", "up")
        netns.ip("route", "add", "default", "via", f"{v4}.1")
        netns.ip("-6", "route", "add", "default", "via", f"{v6}::1")
        netns.sysctl("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0")

    def v4(self, name: str) -> str:
        return self.addresses[name][0]

    def v6(self, name: str) -> str:
        return self.addresses[name][1]
