"""Resolve a snapshot of the desired state into what the data planes must serve.

Pure: both tiers and the console call it on the same snapshot and get the same answer,
so they agree on which listener owns a port and which backends it forwards to. The
rules, in order:

- a listener whose load balancer is missing or has no VIP yet is pending, not served;
- two listeners on the same VIP, port and transport (TCP or UDP) conflict: the older
  one (`created_at`, then name) keeps the port, the newer is rejected with a reason;
- an operator's listener forwards to every exposed Service its selector matches among the
  namespaces its instance admits (its own, `allowed_namespaces`); a Service's own listener
  forwards to that Service;
- backends are the selected Services' endpoints on the listener's target port, deduplicated
  by address and port, in a stable order; not-ready endpoints are left out, and
  terminating-but-serving ones are kept with weight 0 so their connections drain;
- an L7 rule forwards to each of its targets by weight: the Services a target's selector
  picks (default: the listener's) on its target port (default: the listener's), resolved by
  the same rules; a rule that redirects or answers itself has no targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from slb.model import (
    Backend,
    Certificate,
    IPAddress,
    Listener,
    LoadBalancer,
    NodeGroup,
    OwnerKind,
    PortRef,
    Route,
    Service,
)
from slb.selector import LabelSelector
from slb.snapshot import Snapshot, namespace_labels


@dataclass(frozen=True)
class ResolvedTarget:
    """One of a rule's forward targets with the backends it stands for."""

    services: tuple[str, ...]
    backends: tuple[Backend, ...]
    weight: int


@dataclass(frozen=True)
class ResolvedRoute:
    """An L7 rule with its targets' backends (none if it redirects or answers itself)."""

    route: Route
    targets: tuple[ResolvedTarget, ...]

    @property
    def services(self) -> tuple[str, ...]:
        """Every Service the rule forwards to, in its targets' order."""
        return tuple(dict.fromkeys(s for t in self.targets for s in t.services))


@dataclass(frozen=True)
class ResolvedListener:
    """A listener the data planes serve, with everything they need to program it."""

    listener: Listener
    load_balancer: LoadBalancer
    vip: IPAddress
    services: tuple[str, ...]
    """Keys (namespace/name) of the Services it forwards to."""
    backends: tuple[Backend, ...]
    routes: tuple[ResolvedRoute, ...] = ()
    """The listener's L7 routes in order, each with its own backends."""

    @property
    def node_group(self) -> str:
        return self.load_balancer.node_group


@dataclass(frozen=True)
class Rejected:
    """A listener that is not served, and why."""

    listener: str
    reason: str
    pending: bool = False
    """True when it only waits (e.g. for a VIP); False when it is in error."""


@dataclass(frozen=True)
class DesiredState:
    revision: int
    listeners: tuple[ResolvedListener, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    certificates: dict[str, Certificate] = field(default_factory=dict)
    node_groups: dict[str, NodeGroup] = field(default_factory=dict)

    def for_node_group(self, group: str) -> tuple[ResolvedListener, ...]:
        return tuple(r for r in self.listeners if r.node_group == group)


def resolve(snapshot: Snapshot, node_group: str | None = None) -> DesiredState:
    """The desired state, resolved; with `node_group`, only the listeners on its instances
    (what an LB node of that group serves: its work grows with its own share)."""
    balancers = {
        k: s.obj
        for k, s in snapshot.of(LoadBalancer).items()
        if node_group is None or s.obj.node_group == node_group
    }
    services = ExposedServices.of(snapshot)
    listeners = (
        s.obj
        for s in snapshot.of(Listener).values()
        if node_group is None or s.obj.load_balancer in balancers
    )
    winners, rejected = claim_ports(balancers, listeners)
    served = []
    for listener, vip in winners:
        balancer = balancers[listener.load_balancer]
        chosen = selected_services(listener, balancer, services)
        served.append(
            ResolvedListener(
                listener=listener,
                load_balancer=balancer,
                vip=vip,
                services=tuple(s.key for s in chosen),
                backends=backends_for(listener, chosen),
                routes=tuple(
                    _resolve_route(listener, balancer, route, chosen, services)
                    for route in listener.routes
                ),
            )
        )
    return DesiredState(
        revision=snapshot.revision,
        listeners=tuple(sorted(served, key=lambda r: r.listener.name)),
        rejected=tuple(rejected),
        certificates={k: s.obj for k, s in snapshot.of(Certificate).items()},
        node_groups={k: s.obj for k, s in snapshot.of(NodeGroup).items()},
    )


class PortKey(NamedTuple):
    """Where a listener listens. Two listeners with one key clash: one port, one owner."""

    place: IPAddress | str
    """The instance's VIP, or the instance's name while it waits for one."""
    port: int
    transport: str

    def __str__(self) -> str:
        return f"{self.place}:{self.port}/{self.transport}"


def port_key(listener: Listener, balancer: LoadBalancer) -> PortKey:
    """The port `listener` claims on `balancer` (listeners of one instance always share a
    place, and so do instances with the same VIP)."""
    place = balancer.vip if balancer.vip is not None else balancer.name
    return PortKey(place, listener.port, listener.protocol.transport)


def port_taken_by(
    listener: Listener, balancers: Mapping[str, LoadBalancer], others: Iterable[Listener]
) -> str | None:
    """The name of another listener that claims `listener`'s port, if any: an operator's
    write that would clash is refused before it is stored."""
    mine = port_key(listener, balancers[listener.load_balancer])
    for other in others:
        theirs = balancers.get(other.load_balancer)
        if other.name != listener.name and theirs is not None and port_key(other, theirs) == mine:
            return other.name
    return None


def claim_ports(
    balancers: Mapping[str, LoadBalancer], listeners: Iterable[Listener]
) -> tuple[list[tuple[Listener, IPAddress]], list[Rejected]]:
    """Which listeners hold their VIP:port/transport (with the VIP), and which are rejected:
    of two listeners with one `port_key`, the one its instance's owner made wins, then the
    older claim (`created_at`, then name)."""
    winners: list[tuple[Listener, IPAddress]] = []
    rejected: list[Rejected] = []
    claimed: dict[PortKey, str] = {}

    def order(listener: Listener) -> tuple[bool, float, str]:
        balancer = balancers.get(listener.load_balancer)
        owners = balancer is not None and _owns(balancer, listener)
        return not owners, listener.created_at, listener.name

    for listener in sorted(listeners, key=order):
        balancer = balancers.get(listener.load_balancer)
        if balancer is None:
            rejected.append(
                Rejected(listener.name, f"load balancer {listener.load_balancer!r} does not exist")
            )
            continue
        if balancer.vip is None:
            reason = f"load balancer {balancer.name!r} waits for a VIP from pool {balancer.pool!r}"
            rejected.append(Rejected(listener.name, reason, pending=True))
            continue
        key = port_key(listener, balancer)
        if key in claimed:
            reason = (  # a listener of another tenant's: not named (Events reach tenants)
                f"{key} is already taken (by its instance's owner, or an earlier claim)"
            )
            rejected.append(Rejected(listener.name, reason))
            continue
        claimed[key] = listener.name
        winners.append((listener, balancer.vip))
    return winners, rejected


def _owns(balancer: LoadBalancer, listener: Listener) -> bool:
    """Is the listener its instance's owner's: an operator's on an operator's instance, or
    the instance's Service's own?"""
    if balancer.owner.kind is OwnerKind.OPERATOR:
        return listener.owner.kind is OwnerKind.OPERATOR
    return listener.owner == balancer.owner


class ExposedServices:
    """The exposed Services, in key order, indexed by label: a selector with `match_labels`
    looks only at the Services carrying its rarest pair, not at every Service."""

    def __init__(
        self, services: list[Service], namespaces: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.all = services
        self.namespaces = namespaces or {}
        """Each namespace's labels, for instances that admit namespaces by a selector."""
        self.by_key = {s.key: s for s in services}
        self.by_label: dict[tuple[str, str], list[Service]] = {}
        for service in services:
            for pair in service.labels.items():
                self.by_label.setdefault(pair, []).append(service)

    @classmethod
    def of(cls, snapshot: Snapshot) -> ExposedServices:
        return cls(
            [s.obj for _, s in sorted(snapshot.of(Service).items())], namespace_labels(snapshot)
        )

    def matching(self, selector: LabelSelector) -> list[Service]:
        candidates = self.all
        if selector.match_labels:
            candidates = min(
                (self.by_label.get(pair, []) for pair in selector.match_labels.items()), key=len
            )
        return [s for s in candidates if selector.matches(s.labels)]


def selected_services(
    listener: Listener, balancer: LoadBalancer, services: ExposedServices
) -> list[Service]:
    """The Services a listener forwards to: its own Service's, or its selector's."""
    if listener.owner.kind is OwnerKind.SERVICE:
        own = services.by_key.get(listener.owner.name)
        return [own] if own is not None else []
    assert listener.selector is not None  # the model requires it for operators' listeners
    return _admitted(balancer, services, services.matching(listener.selector))


def _admitted(
    balancer: LoadBalancer, exposed: ExposedServices, services: list[Service]
) -> list[Service]:
    """A selector picks among the Services of the namespaces the instance admits: a tenant
    who labels its own Service `app=cart` never joins another's `app=cart` listener."""
    labels = exposed.namespaces
    return [s for s in services if balancer.admits(s.namespace, labels.get(s.namespace))]


def _resolve_route(
    listener: Listener,
    balancer: LoadBalancer,
    route: Route,
    chosen: list[Service],
    services: ExposedServices,
) -> ResolvedRoute:
    targets = []
    for target in route.targets:
        picked = chosen
        if target.selector is not None:
            picked = _admitted(balancer, services, services.matching(target.selector))
        targets.append(
            ResolvedTarget(
                services=tuple(s.key for s in picked),
                backends=backends_for(listener, picked, target_port=target.target_port),
                weight=target.weight,
            )
        )
    return ResolvedRoute(route=route, targets=tuple(targets))


def backends_for(
    listener: Listener, services: Iterable[Service], target_port: PortRef | None = None
) -> tuple[Backend, ...]:
    """The endpoints of `services` on `target_port` (default: the listener's), ready to program."""
    chosen: dict[tuple[IPAddress, int], Backend] = {}
    port_ref = listener.target_port if target_port is None else target_port
    for service in services:
        port = service.port_named(port_ref)
        if port is None:
            continue
        for backend in service.backends.get(port.name, ()):
            conditions = backend.conditions
            if conditions.terminating and conditions.serving:
                backend = backend.model_copy(update={"weight": 0})  # noqa: PLW2901 - drain it
            elif not conditions.ready:
                continue
            key = (backend.address, backend.port)
            if key not in chosen or backend.weight > chosen[key].weight:
                chosen[key] = backend
    return tuple(chosen[k] for k in sorted(chosen, key=_address_order))


def _address_order(key: tuple[IPAddress, int]) -> tuple[int, int, int]:
    address, port = key
    return (address.version, int(address), port)
