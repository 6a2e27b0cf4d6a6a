"""IPVS objects as openslb plans them and as a driver reads them back from the kernel.

They are NamedTuples on purpose: reconcile compares every planned virtual service with
the kernel's on each change, and tuple equality runs in C, so comparing 1,000 services of
10 real servers costs well under a millisecond. Addresses are canonical text (what
`ipaddress` prints), so equal addresses are equal strings.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from typing import Literal, NamedTuple

Transport = Literal["TCP", "UDP", "SCTP", "FWM"]
"""FWM: a firewall-mark service (`ipvsadm -f`); openslb never makes one, but may find one."""
Forwarding = Literal["nat", "dr", "tun"]

FORWARDINGS: tuple[Forwarding, ...] = ("nat", "dr", "tun")

SERVICE_FLAGS = ("ops", "sh-fallback", "sh-port", "mh-fallback", "mh-port")
"""Service flags by ipvsadm's names (`-o`, `-b`); persistence is the timeout, not a flag."""


class ServiceKey(NamedTuple):
    """What identifies a virtual service: protocol, VIP and port."""

    protocol: Transport
    address: str
    """Canonical text; for a firewall-mark service, its family's any-address."""
    port: int
    """The port, or the mark of a firewall-mark service."""

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        if self.protocol == "FWM":
            return f"FWM {self.port}"
        return f"{self.protocol} {join_host_port(self.address, self.port)}"

    def encode(self) -> str:
        """A compact, parseable form for Redis: `TCP/198.18.0.10/80`."""
        return f"{self.protocol}/{self.address}/{self.port}"

    @classmethod
    def decode(cls, text: str) -> ServiceKey:
        protocol, address, port = text.split("/")
        if protocol not in ("TCP", "UDP", "SCTP", "FWM"):
            raise ValueError(f"unknown protocol in service key {text!r}")
        return cls(protocol, address, int(port))  # type: ignore[arg-type]


class Dest(NamedTuple):
    """A real server of a virtual service, as programmed."""

    address: str
    port: int
    weight: int
    forwarding: Forwarding
    upper: int = 0
    """IPVS's upper connection threshold: at this many connections (active and inactive)
    the real server takes no new ones; 0: none."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        upper = f" max{self.upper}" if self.upper else ""
        return f"{join_host_port(self.address, self.port)} {self.forwarding} w{self.weight}{upper}"


class VirtualService(NamedTuple):
    """A virtual service with everything the kernel holds for it, real servers sorted."""

    key: ServiceKey
    scheduler: str
    flags: tuple[str, ...] = ()
    """Sorted names from SERVICE_FLAGS."""
    timeout: int = 0
    """Persistence timeout in seconds; 0: no persistence."""
    dests: tuple[Dest, ...] = ()

    def attributes(self) -> tuple[str, tuple[str, ...], int]:
        """What `set-service` changes: everything but the key and the real servers."""
        return (self.scheduler, self.flags, self.timeout)

    def __str__(self) -> str:
        persistent = f" persistent {self.timeout}" if self.timeout else ""
        flags = f" ({','.join(self.flags)})" if self.flags else ""
        return f"{self.key} {self.scheduler}{persistent}{flags}"


class Counters(NamedTuple):
    """A real server's connection counts, from the kernel."""

    active: int = 0
    inactive: int = 0
    persistent: int = 0


class Stats(NamedTuple):
    """Traffic counters and rates, as the kernel keeps them per service and per real server."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


class DestStats(NamedTuple):
    dest: Dest
    counters: Counters
    stats: Stats


class ServiceStats(NamedTuple):
    service: VirtualService
    stats: Stats
    dests: tuple[DestStats, ...]


def address_order(address: str) -> tuple[int, bytes]:
    """Numeric order of canonical addresses, IPv4 first, cheap enough for hot paths."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    return (len(packed), packed)


def dest_order(dest: Dest) -> tuple[int, bytes, int]:
    length, packed = address_order(dest.address)
    return (length, packed, dest.port)


def sort_dests(dests: Iterable[Dest]) -> tuple[Dest, ...]:
    """Real servers in the one order plans and dumps share, so equal sets are equal tuples."""
    return tuple(sorted(dests, key=dest_order))


def address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> str:
    """Canonical text of an address, interned.

    Plans and kernel reads yield the same few thousand addresses again and again; interned,
    equal addresses are the same object, and comparing a plan of 1,000 services with the
    kernel's view costs a fifth of what comparing fresh strings does.
    """
    return sys.intern(str(ipaddress.ip_address(address) if isinstance(address, str) else address))


def join_host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class KernelState(NamedTuple):
    """What a driver read from the kernel: services, and connection counts per real server."""

    services: dict[ServiceKey, VirtualService]
    counters: dict[tuple[ServiceKey, tuple[str, int]], Counters]

    @classmethod
    def empty(cls) -> KernelState:
        return cls({}, {})


# -- operations: what reconcile asks a driver to do ------------------------------------------


class AddService(NamedTuple):
    service: VirtualService
    """Its real servers are added by their own operations."""

    def __str__(self) -> str:
        return f"add-service {self.service}"


class SetService(NamedTuple):
    service: VirtualService

    def __str__(self) -> str:
        return f"set-service {self.service}"


class DeleteService(NamedTuple):
    key: ServiceKey

    def __str__(self) -> str:
        return f"delete-service {self.key}"


class AddDest(NamedTuple):
    key: ServiceKey
    dest: Dest

    def __str__(self) -> str:
        return f"add-dest {self.key} -> {self.dest}"


class SetDest(NamedTuple):
    key: ServiceKey
    dest: Dest

    def __str__(self) -> str:
        return f"set-dest {self.key} -> {self.dest}"


class DeleteDest(NamedTuple):
    key: ServiceKey
    dest: Dest

    def __str__(self) -> str:
        return f"delete-dest {self.key} -> {self.dest}"


Op = AddService | SetService | DeleteService | AddDest | SetDest | DeleteDest


def op_key(op: Op) -> ServiceKey:
    """The virtual service an operation acts on."""
    return op.service.key if isinstance(op, AddService | SetService) else op.key
