"""Endpoints (EDS): the backends of each cluster, the only thing a scale event changes.

A backend with weight 0 (draining: a terminating pod, or an operator's drain) is left
out rather than sent with health status DRAINING. Either way Envoy sends it no new
requests while requests already on its connections finish; but a DRAINING host still
counts in Envoy's panic threshold, and with half the backends draining Envoy would
spread new requests over all of them again. Leaving it out drains it for sure.
"""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from cmi.model import Backend, Listener
from cmi.resolve import ResolvedListener
from l7.translate import policy
from l7.translate.common import cluster_name, ip_text


def load_assignments(resolved: ResolvedListener) -> list[endpoint_pb2.ClusterLoadAssignment]:
    listener = resolved.listener
    out = [load_assignment(listener, cluster_name(listener.name), resolved.backends)]
    for r in resolved.routes:
        out.append(load_assignment(listener, cluster_name(listener.name, r.route.name), r.backends))
    return out


def load_assignment(
    listener: Listener, name: str, backends: tuple[Backend, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    serving = [b for b in backends if b.weight > 0]
    if not serving:
        return assignment
    weighted = policy.weighted(listener)
    add = assignment.endpoints.add().lb_endpoints.add
    for backend in serving:
        lb_endpoint: endpoint_components_pb2.LbEndpoint = add()
        socket = lb_endpoint.endpoint.address.socket_address
        socket.address = ip_text(backend.address)
        socket.port_value = backend.port
        if weighted:
            lb_endpoint.load_balancing_weight.value = backend.weight
    return assignment
