"""Pure translation: the desired state of one node group -> Envoy v3 resources.

No I/O: the caller passes the resolved desired state and the private keys its
certificates name. One module per resource kind; this one puts them together. Each
listener's resources depend only on that listener (and its certificates), which is what
lets the cache reuse them when something else changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from l7.translate.cluster import clusters
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from l7.translate.endpoint import load_assignments
from l7.translate.listener import listener
from l7.translate.route import route_configuration
from l7.translate.secret import secret
from slb.model import Certificate
from slb.resolve import DesiredState, ResolvedListener


@dataclass(frozen=True)
class ListenerResources:
    """Everything one listener needs, except the secrets (shared between listeners)."""

    listener: listener_pb2.Listener
    route: route_pb2.RouteConfiguration
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    certificates: tuple[str, ...]
    """Names of the certificates (SDS secrets) it uses."""


@dataclass
class Resources:
    """One node group's resources by type URL, then name."""

    by_type: dict[str, dict[str, Message]] = field(
        default_factory=lambda: {t: {} for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET)}
    )
    problems: list[str] = field(default_factory=list)

    def add(self, type_url: str, name: str, message: Message) -> None:
        self.by_type[type_url][name] = message


def servable(
    resolved: ResolvedListener,
    certificates: Mapping[str, Certificate],
    keys: Mapping[str, str],
    namespaces: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, Certificate] | None, list[str]]:
    """The listener's usable certificates (they exist, its Service's namespace may use them,
    and they have a key), or None if it cannot be served at all (HTTPS without one); and the
    problems found. `namespaces`: each namespace's labels (`slb.snapshot.namespace_labels`),
    for certificates that admit namespaces by a selector."""
    usable, problems = {}, []
    name = resolved.listener.name
    tenant = resolved.listener.tenant
    for cert_name in resolved.listener.certificates:
        cert = certificates.get(cert_name)
        if tenant is not None and (cert is None or not cert.admits(tenant, namespaces.get(tenant))):
            # One message for both: a tenant learns nothing of others' certificates.
            problems.append(
                f"listener {name!r}: no certificate {cert_name!r} that namespace {tenant} may use"
            )
        elif cert is None:
            problems.append(f"listener {name!r}: certificate {cert_name!r} does not exist")
        elif cert.key_ref not in keys:
            problems.append(
                f"listener {name!r}: certificate {cert_name!r} has no private key "
                f"(key_ref {cert.key_ref!r} is not stored)"
            )
        else:
            usable[cert_name] = cert
    if resolved.listener.terminates_tls and not usable:
        problems.append(f"listener {name!r}: no usable certificate; not served")
        return None, problems
    return usable, problems


def translate_listener(
    resolved: ResolvedListener, usable: Mapping[str, Certificate]
) -> ListenerResources:
    """One servable listener's resources; `usable` as `servable` returns it."""
    return ListenerResources(
        listener=listener(resolved, usable),
        route=route_configuration(resolved),
        clusters=tuple(clusters(resolved)),
        endpoints=tuple(load_assignments(resolved)),
        certificates=tuple(usable),
    )


def translate(
    state: DesiredState,
    group: str,
    keys: Mapping[str, str],
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> Resources:
    """The resources Envoys of node group `group` serve; `keys` maps key_ref -> PEM key,
    `namespaces` each namespace's labels (none: no certificate admits by a selector)."""
    out = Resources()
    wanted: dict[str, Certificate] = {}
    for resolved in state.for_node_group(group):
        if not resolved.listener.protocol.is_l7:
            continue
        usable, problems = servable(resolved, state.certificates, keys, namespaces or {})
        out.problems += problems
        if usable is None:
            continue
        result = translate_listener(resolved, usable)
        out.add(LISTENER, result.listener.name, result.listener)
        out.add(ROUTE, result.route.name, result.route)
        for c in result.clusters:
            out.add(CLUSTER, c.name, c)
        for e in result.endpoints:
            out.add(ENDPOINT, e.cluster_name, e)
        wanted.update(usable)
    for name, cert in sorted(wanted.items()):
        out.add(SECRET, name, secret(cert, keys[cert.key_ref]))
    return out


__all__ = [
    "ListenerResources",
    "Resources",
    "servable",
    "translate",
    "translate_listener",
]
