"""Endpoints (EDS): the backends of each cluster, the only thing a scale event changes.

A backend with weight 0 (draining: a terminating pod, or an operator's drain) is left
out rather than sent with health status DRAINING. Either way Envoy sends it no new
requests while requests already on its connections finish; but a DRAINING host still
counts in Envoy's panic threshold, and with half the backends draining Envoy would
spread new requests over all of them again. Leaving it out drains it for sure.

There are ten times more endpoints than anything else (100,000 at 10,000 Services), so
they are encoded straight to protobuf's wire format, in canonical field order: the very
bytes serializing a ClusterLoadAssignment gives (tests/l7/test_translate.py checks), in
less than half the time of building the messages.
"""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from l7.translate import policy
from l7.translate.common import clusters_of, ip_text, varint, wire
from slb.model import Backend, Listener
from slb.resolve import ResolvedListener

ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment


def load_assignments(resolved: ResolvedListener) -> list[endpoint_pb2.ClusterLoadAssignment]:
    raw = serialized_load_assignments(resolved)
    return [ClusterLoadAssignment.FromString(assignment) for _, assignment in raw]


def serialized_load_assignments(resolved: ResolvedListener) -> list[tuple[str, bytes]]:
    """(cluster name, serialized ClusterLoadAssignment) for the listener and each route."""
    listener = resolved.listener
    return [(name, encode(listener, name, backends)) for name, backends in clusters_of(resolved)]


def _port_field(port: int) -> bytes:
    """SocketAddress.port_value (field 3, varint), looked up: ports repeat."""
    field = _PORTS.get(port)
    if field is None:
        field = _PORTS[port] = b"\x18" + varint(port)
    return field


def _weight_field(weight: int) -> bytes:
    """LbEndpoint.load_balancing_weight (field 4) {value: 1}, looked up: weights repeat."""
    field = _WEIGHTS.get(weight)
    if field is None:
        value = b"\x08" + varint(weight)
        field = _WEIGHTS[weight] = b"\x22" + varint(len(value)) + value
    return field


_PORTS: dict[int, bytes] = {}
_WEIGHTS: dict[int, bytes] = {}


def encode(listener: Listener, name: str, backends: tuple[Backend, ...]) -> bytes:
    """ClusterLoadAssignment {cluster_name: 1, endpoints: 2 [LocalityLbEndpoints {
    lb_endpoints: 2 [LbEndpoint {endpoint: 1 {address: 1 {socket_address: 1 {address: 2,
    port_value: 3}}}, load_balancing_weight: 4 {value: 1}}]}]}

    Every length inside one endpoint is below 128 (an address has at most 39 characters),
    so each is a single byte and an endpoint's header is one `bytes` of ten."""
    weighted = policy.weighted(listener)
    parts = []
    for backend in backends:
        weight = backend.weight
        if not weight:
            continue
        address = ip_text(backend.address).encode()
        port = _port_field(backend.port)
        tail = _weight_field(weight) if weighted else b""
        size = 2 + len(address) + len(port)  # the SocketAddress
        header = (0x12, size + 6 + len(tail), 0x0A, size + 4, 0x0A, size + 2, 0x0A, size, 0x12)
        parts.append(bytes((*header, len(address))) + address + port + tail)
    out = wire(1, name.encode())
    if parts:
        out += wire(2, b"".join(parts))
    return out
