"""The VIP guard: an nftables table that keeps the node's own services off its VIPs. Pure.

The VIPs are local addresses (on `slb0`, see `l4.vip`), so anything on the node bound to
0.0.0.0 or :: (sshd, exporters, ...) would answer on every VIP. The table `inet
openslb_guard` drops what is addressed to a VIP unless it is one of the node's listeners
(VIP, protocol, port), ping, or ICMP errors (PMTU discovery) and IPv6 neighbour discovery;
replies of connections the node already has and loopback pass. Nothing addressed to any
other address is looked at, so management addresses, VRRP (multicast or to the peers) and
connection sync are untouched.

Its input chain runs at priority -10: before the filter table (0) and before IPVS, which
takes VIP traffic at LOCAL_IN after both. `accept` there only ends this table's say: a
stricter filter table of the operator's still applies.

The agent owns the table: `load_script` replaces it whole (create, delete, define, fill:
one nft transaction, so there is never a moment without it); `update_script` replaces
only the sets' contents. deploy/lb-node/nftables-openslb.nft is `TABLE_DEFINITION` for
reading and `nft -c -f`; the agent needs no file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from l4.ipvs import ServiceKey, address_order

TABLE = "inet openslb_guard"

TABLE_DEFINITION = """\
table inet openslb_guard {
    set vips4 {
        type ipv4_addr
    }

    set vips6 {
        type ipv6_addr
    }

    set listeners4 {
        type ipv4_addr . inet_proto . inet_service
    }

    set listeners6 {
        type ipv6_addr . inet_proto . inet_service
    }

    chain input {
        type filter hook input priority filter - 10; policy accept;
        ip daddr @vips4 goto vip4
        ip6 daddr @vips6 goto vip6
    }

    chain vip4 {
        iif "lo" accept
        ct state established,related accept
        ip daddr . meta l4proto . th dport @listeners4 accept
        icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept
        drop
    }

    chain vip6 {
        iif "lo" accept
        ct state established,related accept
        ip6 daddr . meta l4proto . th dport @listeners6 accept
        icmpv6 type {
            echo-request, destination-unreachable, packet-too-big, time-exceeded,
            parameter-problem, nd-neighbor-solicit, nd-neighbor-advert
        } accept
        drop
    }
}
"""
"""The table as the agent loads it (empty sets); the shipped .nft file holds the same."""

_SETS = ("vips4", "vips6", "listeners4", "listeners6")
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
"""IPVS protocols with a port; a firewall-mark service has no VIP to open."""

Listener = tuple[str, str, int]
"""(VIP, nft protocol name, port)."""


@dataclass(frozen=True)
class Openings:
    """What the guard lets through: the VIPs it guards and the listeners open on them."""

    vips: frozenset[str] = frozenset()
    listeners: frozenset[Listener] = frozenset()

    def __or__(self, other: Openings) -> Openings:
        return Openings(self.vips | other.vips, self.listeners | other.listeners)


def openings(vips: Iterable[str], services: Iterable[ServiceKey]) -> Openings:
    """The guard for these VIPs (a plan's) with these virtual services open on them."""
    listeners = frozenset(
        (key.address, _PROTOCOLS[key.protocol], key.port)
        for key in services
        if key.protocol in _PROTOCOLS
    )
    return Openings(frozenset(vips), listeners)


def update_script(opened: Openings) -> str:
    """nft input that replaces the sets' contents in one transaction (the table exists)."""
    flushes = "".join(f"flush set {TABLE} {name}\n" for name in _SETS)
    return flushes + _elements(opened)


def load_script(opened: Openings) -> str:
    """nft input that replaces the whole table, filled, in one transaction: the first line
    creates it if missing, so that the delete cannot fail."""
    return f"table {TABLE}\ndelete table {TABLE}\n{TABLE_DEFINITION}{_elements(opened)}"


def _elements(opened: Openings) -> str:
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for vip in sorted(opened.vips, key=address_order):
        by_family[_family(vip)].append(vip)
    listeners: dict[int, list[str]] = {4: [], 6: []}
    for vip, protocol, port in sorted(opened.listeners, key=_listener_order):
        listeners[_family(vip)].append(f"{vip} . {protocol} . {port}")
    return (
        _add("vips4", by_family[4])
        + _add("vips6", by_family[6])
        + _add("listeners4", listeners[4])
        + _add("listeners6", listeners[6])
    )


def _add(name: str, elements: Iterable[str]) -> str:
    listed = ", ".join(elements)
    return f"add element {TABLE} {name} {{ {listed} }}\n" if listed else ""


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def _listener_order(listener: Listener) -> tuple[tuple[int, bytes], str, int]:
    vip, protocol, port = listener
    return address_order(vip), protocol, port
