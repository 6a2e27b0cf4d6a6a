"""What the console shows, computed from a snapshot and the tiers' reports.

Pure functions over plain inputs (a `Snapshot`, the `StatusBoard`'s reports), so pages and
the API show exactly the same thing and the rules are tested without a browser:

- whether a listener is served is the one rule cmi's condition asks too
  (`slb.readiness`): every LB node of its instance's node group, and every Envoy of it
  for HTTP, HTTPS and GRPC, at the revision that last changed the listener, its instance
  and its certificates;
- a node is green at or past that revision, red if its newest attempt at or past it
  failed (e.g. an Envoy NACK, with the reason), pending otherwise;
- a listener that does not hold its port (a conflict, a missing instance) is red with the
  reason cmi's resolution gives; one whose instance waits for a VIP is pending.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from slb.model import (
    Backend,
    Certificate,
    ForwardTarget,
    Listener,
    LoadBalancer,
    ModelError,
    NodeGroup,
    Service,
    named_service,
)
from slb.readiness import State, readiness
from slb.resolve import (
    ExposedServices,
    Rejected,
    Resolver,
    Touched,
    claim_ports,
    selected_services,
)
from slb.selector import LabelSelector
from slb.snapshot import Snapshot, Stored, namespace_labels
from slb.storage.status import TierStatus


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
    reports: tuple[TierStatus, ...] = ()
    """The reports of the nodes that must program the listener, in display order."""

    @functools.cached_property
    def nodes(self) -> tuple[NodeState, ...]:
        """Each node's state; built only when shown (a list page needs the summary only)."""
        return tuple(node_state(r, self.needed_revision) for r in self.reports)

    def as_json(self, nodes: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "reason": self.reason,
            "needed_revision": self.needed_revision,
        }
        if nodes:
            out["nodes"] = [n.as_json() for n in self.nodes]
        return out


@dataclass(frozen=True)
class Boards:
    """Every node's report, per tier."""

    l4: Mapping[str, TierStatus] = field(default_factory=dict)
    l7: Mapping[str, TierStatus] = field(default_factory=dict)

    def envoys(self) -> dict[str, tuple[TierStatus, ...]]:
        """Group -> its Envoys' reports."""
        out: dict[str, list[TierStatus]] = {}
        for status in self.l7.values():
            out.setdefault(status.group, []).append(status)
        return {group: tuple(reports) for group, reports in out.items()}


@dataclass(frozen=True)
class Placement:
    """What the snapshot alone says about a listener: computed once per revision."""

    needed: int
    """The newest revision among the listener's, its instance's and its certificates'."""
    group: str
    node_group: NodeGroup | None
    l7: bool
    rejection: Rejected | None


def placements(snapshot: Snapshot) -> dict[str, Placement]:
    """Every listener's placement, from the whole snapshot."""
    balancers = snapshot.of(LoadBalancer)
    listeners = snapshot.of(Listener)
    _, rejected = claim_ports(
        {k: s.obj for k, s in balancers.items()}, (s.obj for s in listeners.values())
    )
    not_served = {r.listener: r for r in rejected}
    return {name: placement(snapshot, stored, not_served.get(name))
            for name, stored in listeners.items()}  # fmt: skip


def placement(
    snapshot: Snapshot, stored: Stored[Listener], rejection: Rejected | None
) -> Placement:
    listener = stored.obj
    balancer = snapshot.of(LoadBalancer).get(listener.load_balancer)
    certificates = snapshot.of(Certificate)
    groups = snapshot.of(NodeGroup)
    needed = max(
        [stored.revision, balancer.revision if balancer else 0]
        + [certificates[c].revision for c in listener.certificates if c in certificates]
    )
    return Placement(
        needed=needed,
        group=(group := balancer.obj.node_group if balancer else ""),
        node_group=groups[group].obj if group in groups else None,
        l7=listener.protocol.is_l7,
        rejection=rejection,
    )


class PlacementBook:
    """Every listener's placement, kept current by the change stream.

    A change re-places only the listeners it reaches, as the resolver finds them (who holds
    a port may move with them); a certificate or node group change, rare, places every
    listener again. Each update makes a new dict: a view made before keeps its own."""

    def __init__(self) -> None:
        self._resolver = Resolver()
        self.placed: dict[str, Placement] = {}
        self.revision: int | None = None
        """The revision `placed` is of (None: none yet)."""

    def update(self, snapshot: Snapshot, touched: Touched | None) -> dict[str, Placement]:
        """The placements of `snapshot`, the last one's moved past `touched` (None: all)."""
        pairs = None if touched is None else list(touched)
        state = self._resolver.update(snapshot, pairs)
        rejected = {r.listener: r for r in state.rejected}
        listeners = snapshot.of(Listener)
        names: Iterable[str] = listeners
        placed: dict[str, Placement] = {}
        if not (
            pairs is None
            or state.since is None
            or any(kind in (Certificate.kind, NodeGroup.kind) for kind, _ in pairs)
        ):
            names = state.changed | {key for kind, key in pairs if kind == Listener.kind}
            placed = dict(self.placed)
        for name in names:
            stored = listeners.get(name)
            if stored is None:
                placed.pop(name, None)
            else:
                placed[name] = placement(snapshot, stored, rejected.get(name))
        self.placed, self.revision = placed, snapshot.revision
        return placed


def listener_states(
    snapshot: Snapshot, boards: Boards, placed: Mapping[str, Placement] | None = None
) -> dict[str, ListenerState]:
    """The state of every listener in the snapshot (`placed`: its placements, if known)."""
    placed = placements(snapshot) if placed is None else placed
    envoys = boards.envoys()
    return {name: listener_state(place, boards, envoys) for name, place in placed.items()}


class ListenerStates(Mapping[str, ListenerState]):
    """Each listener's state, worked out when first asked for: a page of 50 listeners
    costs 50 of them, not every listener, each time a node reports."""

    def __init__(self, placed: Mapping[str, Placement], boards: Boards) -> None:
        self._placed, self._boards = placed, boards
        self._envoys = boards.envoys()
        self._known: dict[str, ListenerState] = {}

    def __getitem__(self, name: str) -> ListenerState:
        state = self._known.get(name)
        if state is None:
            state = listener_state(self._placed[name], self._boards, self._envoys)
            self._known[name] = state
        return state

    def __iter__(self) -> Iterator[str]:
        return iter(self._placed)

    def __len__(self) -> int:
        return len(self._placed)


def listener_state(
    place: Placement, boards: Boards, envoys: Mapping[str, tuple[TierStatus, ...]]
) -> ListenerState:
    if place.rejection is not None:
        state: State = "pending" if place.rejection.pending else "error"
        return ListenerState(state, place.rejection.reason, place.needed)
    now = readiness(
        place.needed, group_name=place.group, group=place.node_group, l7=place.l7,
        lb_reports=boards.l4, envoys=envoys.get(place.group, ()),
    )  # fmt: skip
    return ListenerState(now.state, now.message, place.needed, now.reports)


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
    outside: int = 0
    """How many more match in namespaces the listener's instance does not admit."""

    @property
    def ready(self) -> int:
        return sum(s.ready for s in self.services)

    def as_json(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "error": self.error,
            "services": [s.as_json() for s in self.services],
            "ready_endpoints": self.ready,
            "outside_namespaces": self.outside,
        }


def preview(
    snapshot: Snapshot,
    text: str,
    target_port: int | str | None = None,
    load_balancer: str | None = None,
) -> Preview:
    """Which exposed Services a selector typed so far matches (or the one `service NS/NAME`
    names), with their ready endpoints; with `load_balancer`, only those of the namespaces
    that instance admits (the others are counted: a listener there would not forward to
    them)."""
    if not text.strip():
        return Preview(text, None)
    try:
        if (key := named_service(text)) is not None:  # that one, if it is exposed
            target = ForwardTarget.model_validate({"service": key})
            named = snapshot.of(Service).get(key)
            matched, shown = ([named] if named is not None else []), str(target)
        else:
            selector = LabelSelector.parse(text)
            matched = [s for _, s in sorted(snapshot.of(Service).items())
                       if selector.matches(s.obj.labels)]  # fmt: skip
            shown = str(selector)
    except ValueError as exc:  # pydantic's ValidationError is one too
        return Preview(text, _first_problem(exc))
    balancer = snapshot.of(LoadBalancer).get(load_balancer or "")
    labels = namespace_labels(snapshot)
    admitted = [
        s for s in matched
        if balancer is None or balancer.obj.admits(s.obj.namespace, labels.get(s.obj.namespace))
    ]  # fmt: skip
    rows = tuple(service_row(stored, target_port) for stored in admitted)
    return Preview(shown, None, rows, outside=len(matched) - len(admitted))


def _first_problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return ModelError.from_validation("ForwardTarget", exc).errors[0].message
    return str(exc).splitlines()[0]


def listener_backends(snapshot: Snapshot, listener: Listener) -> list[tuple[str, Backend, str]]:
    """Every endpoint of the Services a listener selects, with its Service and health.

    Health is what Kubernetes says of the endpoint: ready (gets traffic), draining
    (terminating but serving: weight 0, connections finish) or not ready (left out).
    """
    balancer = snapshot.of(LoadBalancer).get(listener.load_balancer)
    if balancer is None:
        return []
    exposed = ExposedServices.of(snapshot)
    out = []
    chosen = selected_services(listener, balancer.obj, exposed)
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
