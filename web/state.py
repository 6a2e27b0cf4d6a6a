"""What the console shows, computed from a snapshot and the tiers' reports.

Pure functions over plain inputs (a `Snapshot`, the `StatusBoard`'s reports), so pages and
the API show exactly the same thing and the rules are tested without a browser:

- a listener must reach every node of its instance's node group: the L4 tier (IPVS) for
  every listener, and the L7 tier (Envoy) too for HTTP, HTTPS and GRPC;
- the revision a node must have programmed is the newest of the revisions that last
  changed the listener, its instance and its certificates;
- a node is green at or past that revision, red if its newest attempt at or past it
  failed (e.g. an Envoy NACK, with the reason), pending otherwise;
- a listener that does not hold its port (a conflict, a missing instance) is red with the
  reason cmi's resolution gives; one whose instance waits for a VIP is pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cmi.model import Backend, Certificate, Listener, LoadBalancer, OwnerKind, Service
from cmi.resolve import claim_ports
from cmi.selector import LabelSelector
from cmi.status import TierStatus
from cmi.store import Snapshot, Stored

State = Literal["served", "pending", "error"]


@dataclass(frozen=True)
class NodeState:
    tier: str
    node: str
    group: str
    state: State
    revision: int
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "node": self.node,
            "group": self.group,
            "state": self.state,
            "revision": self.revision,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ListenerState:
    state: State
    reason: str
    needed_revision: int
    nodes: tuple[NodeState, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "needed_revision": self.needed_revision,
            "nodes": [n.as_json() for n in self.nodes],
        }


@dataclass(frozen=True)
class Boards:
    """Every node's report, per tier."""

    l4: Mapping[str, TierStatus] = field(default_factory=dict)
    l7: Mapping[str, TierStatus] = field(default_factory=dict)


def listener_states(snapshot: Snapshot, boards: Boards) -> dict[str, ListenerState]:
    """The state of every listener in the snapshot."""
    balancers = snapshot.of(LoadBalancer)
    certificates = snapshot.of(Certificate)
    listeners = snapshot.of(Listener)
    _, rejected = claim_ports(
        {k: s.obj for k, s in balancers.items()}, (s.obj for s in listeners.values())
    )
    not_served = {r.listener: r for r in rejected}
    by_group: dict[str, dict[str, list[TierStatus]]] = {"l4": {}, "l7": {}}
    for tier, board in (("l4", boards.l4), ("l7", boards.l7)):
        for status in board.values():
            by_group[tier].setdefault(status.group, []).append(status)
    out = {}
    for name, stored in listeners.items():
        listener = stored.obj
        balancer = balancers.get(listener.load_balancer)
        needed = max(
            [stored.revision, balancer.revision if balancer else 0]
            + [certificates[c].revision for c in listener.certificates if c in certificates]
        )
        if (rejection := not_served.get(name)) is not None:
            out[name] = ListenerState(
                "pending" if rejection.pending else "error", rejection.reason, needed
            )
            continue
        assert balancer is not None
        group = balancer.obj.node_group
        tiers = ("l4", "l7") if listener.protocol.is_l7 else ("l4",)
        out[name] = _from_nodes(needed, group, [(t, by_group[t].get(group, [])) for t in tiers])
    return out


def _from_nodes(
    needed: int, group: str, tiers: Iterable[tuple[str, list[TierStatus]]]
) -> ListenerState:
    nodes: list[NodeState] = []
    missing = []
    for tier, statuses in tiers:
        if not statuses:
            missing.append(tier.upper())
        for status in sorted(statuses, key=lambda s: s.node):
            nodes.append(node_state(status, needed))
    errors = [n for n in nodes if n.state == "error"]
    if errors:
        first = errors[0]
        return ListenerState("error", f"{first.node}: {first.detail}", needed, tuple(nodes))
    if missing:
        reason = f"no {' or '.join(missing)} node of group {group!r} has reported yet"
        return ListenerState("pending", reason, needed, tuple(nodes))
    behind = [n for n in nodes if n.state == "pending"]
    if behind:
        reason = f"{len(behind)} of {len(nodes)} nodes have not programmed revision {needed} yet"
        return ListenerState("pending", reason, needed, tuple(nodes))
    return ListenerState("served", f"programmed on {len(nodes)} nodes", needed, tuple(nodes))


def node_state(status: TierStatus, needed: int) -> NodeState:
    if status.revision >= needed:
        return NodeState(
            status.tier, status.node, status.group, "served", status.revision,
            f"at revision {status.revision}",
        )  # fmt: skip
    if status.error and (status.error_revision or status.revision) >= needed:
        return NodeState(
            status.tier, status.node, status.group, "error", status.revision, status.error
        )
    return NodeState(
        status.tier, status.node, status.group, "pending", status.revision,
        f"at revision {status.revision}, needs {needed}",
    )  # fmt: skip


# -- Services and the selector preview -----------------------------------------------------


@dataclass(frozen=True)
class ServiceRow:
    key: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    load_balancer: str
    ports: tuple[str, ...]
    ready: int
    total: int
    revision: int

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "namespace": self.namespace,
            "name": self.name,
            "labels": dict(self.labels),
            "load_balancer": self.load_balancer,
            "ports": list(self.ports),
            "ready_endpoints": self.ready,
            "endpoints": self.total,
            "version": self.revision,
        }


def _ready(backends: Iterable[Backend]) -> int:
    return sum(1 for b in backends if b.conditions.ready and not b.conditions.terminating)


def service_row(stored: Stored[Service], port: int | str | None = None) -> ServiceRow:
    """A Service with its endpoints counted: on one port if given, else on all of them."""
    service = stored.obj
    if port is not None:
        chosen = service.port_named(port)
        lists = [service.backends.get(chosen.name, ())] if chosen else []
    else:
        lists = list(service.backends.values())
    return ServiceRow(
        key=service.key,
        namespace=service.namespace,
        name=service.name,
        labels=service.labels,
        load_balancer=service.load_balancer,
        ports=tuple(f"{p.name or p.port}:{p.port}/{p.protocol}" for p in service.ports),
        ready=sum(_ready(b) for b in lists),
        total=sum(len(b) for b in lists),
        revision=stored.revision,
    )


@dataclass(frozen=True)
class Preview:
    selector: str
    error: str | None
    services: tuple[ServiceRow, ...] = ()

    @property
    def ready(self) -> int:
        return sum(s.ready for s in self.services)

    def as_json(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "error": self.error,
            "services": [s.as_json() for s in self.services],
            "ready_endpoints": self.ready,
        }


def preview(snapshot: Snapshot, text: str, target_port: int | str | None = None) -> Preview:
    """Which exposed Services a selector typed so far matches, with their ready endpoints."""
    if not text.strip():
        return Preview(text, None)
    try:
        selector = LabelSelector.parse(text)
    except ValueError as exc:
        return Preview(text, str(exc).splitlines()[0])
    rows = tuple(
        service_row(stored, target_port)
        for _, stored in sorted(snapshot.of(Service).items())
        if selector.matches(stored.obj.labels)
    )
    return Preview(str(selector), None, rows)


def listener_backends(snapshot: Snapshot, listener: Listener) -> list[tuple[str, Backend, str]]:
    """Every endpoint of the Services a listener selects, with its Service and health.

    Health is what Kubernetes says of the endpoint: ready (gets traffic), draining
    (terminating but serving: weight 0, connections finish) or not ready (left out).
    """
    services = snapshot.of(Service)
    if listener.owner.kind is OwnerKind.SERVICE:
        chosen = [services[listener.owner.name].obj] if listener.owner.name in services else []
    else:
        assert listener.selector is not None
        selector = listener.selector
        chosen = [s.obj for _, s in sorted(services.items()) if selector.matches(s.obj.labels)]
    out = []
    for service in chosen:
        port = service.port_named(listener.target_port)
        if port is None:
            continue
        for backend in service.backends.get(port.name, ()):
            conditions = backend.conditions
            if conditions.terminating:
                health = "draining" if conditions.serving else "not ready"
            else:
                health = "ready" if conditions.ready else "not ready"
            out.append((service.key, backend, health))
    return out
