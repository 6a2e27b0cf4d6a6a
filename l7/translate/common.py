"""Small pieces every resource kind shares: type URLs, names, the ADS config source."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from slb.model import Backend, Route
from slb.resolve import ResolvedListener

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

TYPES = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)
"""Every type the xDS server serves, in make-before-break order."""

KIND_NAMES = {
    LISTENER: "listeners",
    ROUTE: "routes",
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    SECRET: "secrets",
}


def cluster_name(listener: str, route: str | None = None, target: int = 0) -> str:
    """A listener's own cluster is named after it; a rule's first target's is
    `listener/rule`, its others' `listener/rule/N`.

    Both names are DNS labels, so the '/' cannot be ambiguous.
    """
    if route is None:
        return listener
    return f"{listener}/{route}" if target == 0 else f"{listener}/{route}/{target}"


def clusters_of(resolved: ResolvedListener) -> list[tuple[str, tuple[Backend, ...]]]:
    """Every cluster a listener needs, by name, with its backends: its own, then each
    forwarding rule's targets'."""
    return [(name, backends) for name, _, backends in cluster_parts(resolved)]


def cluster_parts(
    resolved: ResolvedListener,
) -> list[tuple[str, Route | None, tuple[Backend, ...]]]:
    """`clusters_of`, with the rule each cluster serves (None: the listener's own)."""
    name = resolved.listener.name
    out: list[tuple[str, Route | None, tuple[Backend, ...]]] = [
        (cluster_name(name), None, resolved.backends)
    ]
    for r in resolved.routes:
        out += [
            (cluster_name(name, r.route.name, i), r.route, t.backends)
            for i, t in enumerate(r.targets)
        ]
        out += [
            (mirror_cluster_name(name, r.route.name, i), r.route, m.backends)
            for i, m in enumerate(r.mirrors)
        ]
    return out


def mirror_cluster_name(listener: str, route: str, mirror: int) -> str:
    """The cluster of a rule's mirror: `listener/rule/mN` (a target's end in a number)."""
    return f"{listener}/{route}/m{mirror}"


def trust(context: Any, ca_pem: str, dns_names: Iterable[str] = ()) -> None:
    """A TLS validation context (`CertificateValidationContext`): the peer's certificate
    must chain to `ca_pem` and, if any are given, carry one of `dns_names`."""
    context.trusted_ca.inline_string = ca_pem
    for name in dns_names:
        san = context.match_typed_subject_alt_names.add()
        san.san_type = san.DNS
        san.matcher.exact = name


def ads() -> config_source_pb2.ConfigSource:
    """Fetch over the same ADS stream (so ordering across types holds), API v3."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    source.ads.SetInParent()
    return source


def ip_text(address: IPv4Address | IPv6Address) -> str:
    """`str(address)`, several times faster for IPv4 (100,000 backends at 10,000 Services)."""
    if address.version == 4:
        return socket.inet_ntoa(address.packed)
    return str(address)


def seconds(value: float) -> duration_pb2.Duration:
    whole = int(value)
    return duration_pb2.Duration(seconds=whole, nanos=round((value - whole) * 1e9))


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


VARINTS = [varint(n) for n in range(1 << 14)]
"""Varints of 0..16383, looked up rather than computed on hot paths."""


def wire(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (string, bytes or message) as it goes on the wire."""
    size = len(payload)
    return VARINTS[number << 3 | 2] + (VARINTS[size] if size < 1 << 14 else varint(size)) + payload


def pack(message: Message) -> any_pb2.Any:
    """Pack deterministically, so equal configuration gives equal bytes and equal hashes."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
