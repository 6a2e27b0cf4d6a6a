"""The VIP guard: an nftables table that keeps the node's own services off its VIPs. Pure.

The VIPs are local addresses (on `slb0`, see `l4.vip`), so anything on the node bound to
0.0.0.0 or :: (sshd, exporters, ...) would answer on every VIP. The table `inet
openslb_guard` drops what is addressed to a VIP unless it is one of the node's listeners
(VIP, protocol, port), ping, or ICMP errors (PMTU discovery) and IPv6 neighbour discovery;
replies of connections the node already has and loopback pass. A listener's access
control applies to new connections here too: a client in its denied networks is dropped,
and a listener with allowed networks (`restricted`) takes only clients in them. A TCP or
UDP listener's `connections_per_second` is a rule of the chain `connection_rates`
(nftables' token bucket, burst as large as the rate): the new connections beyond it are
dropped and counted, so the agent can chart how often it fired. Nothing addressed to any
other address is looked at, so management addresses, VRRP (multicast or to the peers)
and connection sync are untouched.

Its input chain runs at priority -10: before the filter table (0) and before IPVS, which
takes VIP traffic at LOCAL_IN after both. `accept` there only ends this table's say: a
stricter filter table of the operator's still applies.

The agent owns the table: `load_script` replaces it whole (create, delete, define, fill:
one nft transaction, so there is never a moment without it); `update_script` changes
only the set elements that differ from what the table holds, and rewrites the chain
`connection_rates` (one rule per rate-limited listener) only when a rate changed.
deploy/lb-node/nftables-openslb.nft is `TABLE_DEFINITION` for reading and `nft -c -f`; the
agent needs no file.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any

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

    set restricted4 {
        type ipv4_addr . inet_proto . inet_service
    }

    set restricted6 {
        type ipv6_addr . inet_proto . inet_service
    }

    set allowed4 {
        type ipv4_addr . inet_proto . inet_service . ipv4_addr
        flags interval
    }

    set allowed6 {
        type ipv6_addr . inet_proto . inet_service . ipv6_addr
        flags interval
    }

    set denied4 {
        type ipv4_addr . inet_proto . inet_service . ipv4_addr
        flags interval
    }

    set denied6 {
        type ipv6_addr . inet_proto . inet_service . ipv6_addr
        flags interval
    }

    chain input {
        type filter hook input priority filter - 10; policy accept;
        ip daddr @vips4 goto vip4
        ip6 daddr @vips6 goto vip6
    }

    chain vip4 {
        iif "lo" accept
        ct state established,related accept
        ip daddr . meta l4proto . th dport . ip saddr @denied4 drop
        jump connection_rates
        ip daddr . meta l4proto . th dport @restricted4 goto restricted4
        ip daddr . meta l4proto . th dport @listeners4 accept
        icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept
        drop
    }

    chain vip6 {
        iif "lo" accept
        ct state established,related accept
        ip6 daddr . meta l4proto . th dport . ip6 saddr @denied6 drop
        jump connection_rates
        ip6 daddr . meta l4proto . th dport @restricted6 goto restricted6
        ip6 daddr . meta l4proto . th dport @listeners6 accept
        icmpv6 type {
            echo-request, destination-unreachable, packet-too-big, time-exceeded,
            parameter-problem, nd-neighbor-solicit, nd-neighbor-advert
        } accept
        drop
    }

    chain connection_rates {
    }

    chain restricted4 {
        ip daddr . meta l4proto . th dport . ip saddr @allowed4 accept
        drop
    }

    chain restricted6 {
        ip6 daddr . meta l4proto . th dport . ip6 saddr @allowed6 accept
        drop
    }
}
"""
"""The table as the agent loads it (empty sets); the shipped .nft file holds the same."""

_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
"""IPVS protocols with a port; a firewall-mark service has no VIP to open."""

Listener = tuple[str, str, int]
"""(VIP, nft protocol name, port)."""
SourceRule = tuple[str, str, int, str]
"""(VIP, nft protocol name, port, client network)."""
SourceACL = tuple[tuple[str, ...], tuple[str, ...]]
"""A listener's (allowed, denied) client networks, as text."""
Rate = int
"""A listener's new connections a second."""
RateRule = tuple[str, str, int, Rate]
"""(VIP, nft protocol name, port, new connections a second)."""


@dataclass(frozen=True)
class Openings:
    """What the guard lets through: the VIPs it guards, the listeners open on them, and
    the listeners' access control (`restricted`: those with allowed networks)."""

    vips: frozenset[str] = frozenset()
    listeners: frozenset[Listener] = frozenset()
    restricted: frozenset[Listener] = frozenset()
    allowed: frozenset[SourceRule] = frozenset()
    denied: frozenset[SourceRule] = frozenset()
    rates: frozenset[RateRule] = frozenset()

    def __or__(self, other: Openings) -> Openings:
        """Both sets of VIPs and listeners open; the access control and the rates are the
        left side's (the wanted state's, when the agent widens it with what is still
        served)."""
        return Openings(
            self.vips | other.vips, self.listeners | other.listeners,
            self.restricted, self.allowed, self.denied, self.rates,
        )  # fmt: skip


def openings(
    vips: Iterable[str],
    services: Iterable[ServiceKey],
    acls: Mapping[ServiceKey, SourceACL] | None = None,
    rates: Mapping[ServiceKey, Rate] | None = None,
) -> Openings:
    """The guard for these VIPs (a plan's) with these virtual services open on them, each
    under its access control and connection rate if `acls` and `rates` give them."""
    return OpeningsBook().openings(vips, frozenset(services), acls, rates)


_Entry = tuple[Listener, bool, tuple[SourceRule, ...], tuple[SourceRule, ...], RateRule | None]
"""What one virtual service opens: its listener, whether it is restricted, its allowed and
denied client rules, its rate rule."""


def _entry(key: ServiceKey, acl: SourceACL | None, rate: Rate | None) -> _Entry | None:
    listener = listener_of(key)
    if listener is None:
        return None
    allow, deny = acl or ((), ())
    family = _family(key.address)
    return (
        listener,
        bool(allow),
        tuple((*listener, net) for net in allow if _family(net) == family),
        tuple((*listener, net) for net in deny if _family(net) == family),
        (*listener, rate) if rate is not None else None,
    )


class OpeningsBook:
    """`openings` kept by virtual service between calls, so that each call derives again
    only the services whose key, access control or rate differ from the last call's: the
    agent's guard costs what a change touched, not every listener of the node. Finding
    those services is a comparison of the inputs as sets (C speed); the result is always
    what `openings` gives for the same inputs, whatever came before."""

    def __init__(self) -> None:
        self._keys: frozenset[ServiceKey] = frozenset()
        self._acls: dict[ServiceKey, SourceACL] = {}
        self._rates: dict[ServiceKey, Rate] = {}
        self._entries: dict[ServiceKey, _Entry] = {}
        self._listeners: set[Listener] = set()
        self._restricted: set[Listener] = set()
        self._allowed: set[SourceRule] = set()
        self._denied: set[SourceRule] = set()
        self._limited: set[RateRule] = set()

    def openings(
        self,
        vips: Iterable[str],
        services: Set[ServiceKey],
        acls: Mapping[ServiceKey, SourceACL] | None = None,
        rates: Mapping[ServiceKey, Rate] | None = None,
    ) -> Openings:
        keys, acls, rates = frozenset(services), dict(acls or {}), dict(rates or {})
        touched = set(keys ^ self._keys)
        touched.update(key for key, _ in acls.items() ^ self._acls.items())
        touched.update(key for key, _ in rates.items() ^ self._rates.items())
        for key in touched:
            old = self._entries.pop(key, None)
            if old is not None:
                self._move(old, set.discard)
            new = _entry(key, acls.get(key), rates.get(key)) if key in keys else None
            if new is not None:
                self._entries[key] = new
                self._move(new, set.add)
        self._keys, self._acls, self._rates = keys, acls, rates
        return Openings(
            frozenset(vips), frozenset(self._listeners), frozenset(self._restricted),
            frozenset(self._allowed), frozenset(self._denied), frozenset(self._limited),
        )  # fmt: skip

    def _move(self, entry: _Entry, step: Callable[[set[Any], Any], None]) -> None:
        """Add (`set.add`) or take away (`set.discard`) one service's elements. Each
        element names its listener, so no two services share one."""
        listener, restricted, allowed, denied, rate = entry
        step(self._listeners, listener)
        if restricted:
            step(self._restricted, listener)
        for rule in allowed:
            step(self._allowed, rule)
        for rule in denied:
            step(self._denied, rule)
        if rate is not None:
            step(self._limited, rate)


def update_script(known: Openings, wanted: Openings) -> str:
    """nft input that changes the sets' contents from `known` (what the table holds) to
    `wanted` in one transaction: only the elements that differ, deletions first, so a
    change costs what changed, not every listener of the node."""
    gone = Openings(*(getattr(known, f) - getattr(wanted, f) for f in _SET_FIELDS))
    new = Openings(*(getattr(wanted, f) - getattr(known, f) for f in _SET_FIELDS))
    script = _elements(gone, "delete") + _elements(new, "add")
    if known.rates != wanted.rates:
        script += f"flush chain {TABLE} connection_rates\n{_rate_rules(wanted.rates)}"
    return script


_SET_FIELDS = ("vips", "listeners", "restricted", "allowed", "denied")
"""Openings' fields held as set elements, in their order."""


def load_script(opened: Openings) -> str:
    """nft input that replaces the whole table, filled, in one transaction: the first line
    creates it if missing, so that the delete cannot fail."""
    return (
        f"table {TABLE}\ndelete table {TABLE}\n{TABLE_DEFINITION}"
        f"{_elements(opened)}{_rate_rules(opened.rates)}"
    )


def _rate_rules(rates: Iterable[RateRule]) -> str:
    """The `connection_rates` chain's rules: each drops and counts a listener's new connections
    beyond its rate; the comment names the listener, for `rate_drops`."""
    out = ""
    for vip, protocol, port, rate in sorted(rates, key=_rate_order):
        match = f"{'ip6' if _family(vip) == 6 else 'ip'} daddr {vip}"
        out += (
            f"add rule {TABLE} connection_rates {match} meta l4proto {protocol} th dport {port} "
            f"limit rate over {rate}/second burst {rate} packets counter drop "
            f'comment "{vip} {protocol} {port}"\n'
        )
    return out


def rate_drops(listing: Mapping[str, Any]) -> dict[Listener, int]:
    """New connections each listener's rate dropped so far, from `nft -j list chain` of
    the `connection_rates` chain (a counter restarts when the chain is rewritten)."""
    drops: dict[Listener, int] = {}
    for listener, expressions in _listed_rate_rules(listing):
        for expression in expressions:
            if "counter" in expression:
                drops[listener] = int(expression["counter"]["packets"])
    return drops


def _listed_rate_rules(listing: Mapping[str, Any]) -> Iterator[tuple[Listener, list[Any]]]:
    """The `connection_rates` chain's rules in `nft -j` output: each one's listener (its
    comment, as `_rate_rules` writes it) and its expressions."""
    for item in listing.get("nftables", ()):
        rule = item.get("rule")
        if not rule or rule.get("chain") != "connection_rates":
            continue
        vip, protocol, port = str(rule.get("comment", "")).split()
        yield (vip, protocol, int(port)), list(rule.get("expr", ()))


def held(listing: Mapping[str, Any]) -> tuple[str, Openings] | None:
    """What the table holds, from `nft -j list table inet openslb_guard`: its shape (the
    sets' types, the chains and their rules but the rates', as canonical JSON) and what it
    lets through, in `canonical` form; None if it holds what the agent never writes. The
    agent's repair compares both with what it loaded, so that a table nobody touched is
    not loaded again (O(listeners) under the kernel's lock)."""
    shape: list[Any] = []
    sets: dict[str, set[Any]] = {name: set() for name in _SET_NAMES}
    rates: set[RateRule] = set()
    try:
        for item in listing.get("nftables", ()):
            kind, body = next(iter(item.items()))
            if kind == "metainfo" or (kind == "rule" and body["chain"] == "connection_rates"):
                continue
            if kind == "set":
                sets[body["name"]] = {_element(e) for e in body.get("elem", ())}
            shape.append([kind, {k: v for k, v in body.items() if k not in ("handle", "elem")}])
        for listener, expressions in _listed_rate_rules(listing):
            (rate,) = [e["limit"]["rate"] for e in expressions if "limit" in e]
            rates.add((*listener, int(rate)))
        opened = Openings(
            frozenset(sets["vips4"] | sets["vips6"]),
            frozenset(sets["listeners4"] | sets["listeners6"]),
            frozenset(sets["restricted4"] | sets["restricted6"]),
            frozenset(sets["allowed4"] | sets["allowed6"]),
            frozenset(sets["denied4"] | sets["denied6"]),
            frozenset(rates),
        )
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration):
        return None
    return json.dumps(shape, sort_keys=True), canonical(opened)


_SET_NAMES = tuple(f"{field}{family}" for field in _SET_FIELDS for family in (4, 6))


def _element(element: Any) -> Any:
    """A set element as `Openings` holds it: an address, or a tuple whose last part,
    in the access-control sets, is a network."""
    if isinstance(element, str):
        return element
    parts = element["concat"]
    if len(parts) == 3:
        return (parts[0], parts[1], int(parts[2]))
    vip, protocol, port, net = parts
    if isinstance(net, dict):
        net = f"{net['prefix']['addr']}/{net['prefix']['len']}"
    return (vip, protocol, int(port), net)


def canonical(opened: Openings) -> Openings:
    """`opened` with every address and network written as nftables prints it back."""

    def address(text: str) -> str:
        return str(ipaddress.ip_address(text))

    def network(text: str) -> str:
        return ipaddress.ip_network(text, strict=False).with_prefixlen

    def listener(item: Listener) -> Listener:
        return address(item[0]), item[1], item[2]

    def rule(item: SourceRule) -> SourceRule:
        return (*listener(item[:3]), network(item[3]))

    return Openings(
        frozenset(map(address, opened.vips)),
        frozenset(map(listener, opened.listeners)),
        frozenset(map(listener, opened.restricted)),
        frozenset(map(rule, opened.allowed)),
        frozenset(map(rule, opened.denied)),
        frozenset((*listener(r[:3]), r[3]) for r in opened.rates),
    )


def listener_of(key: ServiceKey) -> Listener | None:
    """The guard's name for a virtual service; None for a firewall-mark one."""
    if key.protocol not in _PROTOCOLS:
        return None
    return (key.address, _PROTOCOLS[key.protocol], key.port)


def _elements(opened: Openings, verb: str = "add") -> str:
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for vip in sorted(opened.vips, key=address_order):
        by_family[_family(vip)].append(vip)
    out = _add(verb, "vips4", by_family[4]) + _add(verb, "vips6", by_family[6])
    for name, listeners in (("listeners", opened.listeners), ("restricted", opened.restricted)):
        lines: dict[int, list[str]] = {4: [], 6: []}
        for vip, protocol, port in sorted(listeners, key=_listener_order):
            lines[_family(vip)].append(f"{vip} . {protocol} . {port}")
        out += _add(verb, f"{name}4", lines[4]) + _add(verb, f"{name}6", lines[6])
    for name, rules in (("allowed", opened.allowed), ("denied", opened.denied)):
        lines = {4: [], 6: []}
        for vip, protocol, port, net in sorted(rules, key=_rule_order):
            lines[_family(vip)].append(f"{vip} . {protocol} . {port} . {net}")
        out += _add(verb, f"{name}4", lines[4]) + _add(verb, f"{name}6", lines[6])
    return out


def _add(verb: str, name: str, elements: Iterable[str]) -> str:
    listed = ", ".join(elements)
    return f"{verb} element {TABLE} {name} {{ {listed} }}\n" if listed else ""


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def _listener_order(listener: Listener) -> tuple[tuple[int, bytes], str, int]:
    vip, protocol, port = listener
    return address_order(vip), protocol, port


def _rate_order(rule: RateRule) -> tuple[tuple[int, bytes], str, int]:
    return _listener_order(rule[:3])


def _rule_order(rule: SourceRule) -> tuple[tuple[int, bytes], str, int, tuple[int, bytes], str]:
    vip, protocol, port, net = rule
    return address_order(vip), protocol, port, address_order(net.split("/")[0]), net
