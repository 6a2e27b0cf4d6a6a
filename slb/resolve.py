"""Resolve a snapshot of the desired state into what the data planes must serve.

Pure: both tiers and the console call it on the same snapshot and get the same answer,
so they agree on which listener owns a port and which backends it forwards to. The
rules, in order:

- a listener whose load balancer is missing or has no VIP yet is pending, not served;
- two listeners on the same VIP, port and transport (TCP or UDP) conflict: the older
  one (`created_at`, then name) keeps the port, the newer is rejected with a reason;
- an operator's listener forwards to every exposed Service its selector matches among the
  namespaces its instance admits (its own, `allowed_namespaces`); a Service's own listener
  forwards to that Service; a Gateway's listener forwards only by its rules;
- backends are the selected Services' endpoints on the listener's target port, deduplicated
  by address and port, in a stable order; not-ready endpoints are left out, and
  terminating-but-serving ones are kept with weight 0 so their connections drain;
- an L7 rule forwards to each of its targets by weight: the Services a target's selector
  picks, or the one it names (default: the listener's), on its target port (default: the
  listener's), resolved by the same rules (a named Service of a namespace the instance does
  not admit is left out, as a selector would leave it); a rule that redirects or answers
  itself has no targets;
- a Gateway's TCP or UDP listener has one rule, and its backends are that rule's targets'
  endpoints, each weighted by its target's share (`weighted_backends`), as IPVS needs them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Generic, NamedTuple, TypeVar

from slb.model import (
    MAX_WEIGHT,
    Backend,
    Certificate,
    ForwardTarget,
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
    mirrors: tuple[ResolvedTarget, ...] = ()
    """Its mirrors' backends, in `route.mirrors`' order (weight: not read)."""

    @property
    def services(self) -> tuple[str, ...]:
        """Every Service the rule forwards or mirrors to, in its targets' order."""
        both = (*self.targets, *self.mirrors)
        return tuple(dict.fromkeys(s for t in both for s in t.services))


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
    since: int | None = field(default=None, compare=False)
    """The revision of the state `changed` counts from (a `Resolver`'s previous one)."""
    changed: frozenset[str] = field(default=frozenset(), compare=False)
    """The listeners resolved again since revision `since`; every other one is the very
    object it was then."""
    by_name: Mapping[str, ResolvedListener] = field(default_factory=dict, compare=False)
    """The listeners by name, when a `Resolver` made the state (else empty)."""

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
    served = [
        resolved_listener(listener, balancers[listener.load_balancer], vip, services)
        for listener, vip in winners
    ]
    return DesiredState(
        revision=snapshot.revision,
        listeners=tuple(sorted(served, key=lambda r: r.listener.name)),
        rejected=tuple(sorted(rejected, key=lambda r: r.listener)),
        certificates={k: s.obj for k, s in snapshot.of(Certificate).items()},
        node_groups={k: s.obj for k, s in snapshot.of(NodeGroup).items()},
    )


def resolved_listener(
    listener: Listener, balancer: LoadBalancer, vip: IPAddress, services: ExposedServices
) -> ResolvedListener:
    """A listener that holds its port, with the Services and backends it forwards to."""
    chosen = selected_services(listener, balancer, services)
    routes = tuple(
        _resolve_route(listener, balancer, route, chosen, services) for route in listener.routes
    )
    if routes and not listener.protocol.is_l7:  # a Gateway's TCP or UDP listener: its rule's
        return ResolvedListener(listener, balancer, vip, routes[0].services,
                                weighted_backends(routes[0].targets), routes)  # fmt: skip
    return ResolvedListener(
        listener=listener,
        load_balancer=balancer,
        vip=vip,
        services=tuple(s.key for s in chosen),
        backends=backends_for(listener, chosen),
        routes=routes,
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
    """The exposed Services, indexed by key and by label: a selector with `match_labels`
    looks only at the Services carrying its rarest pair, not at every Service. `put` and
    `remove` keep it current for `Resolver`."""

    def __init__(
        self, services: Iterable[Service], namespaces: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.namespaces = namespaces or {}
        """Each namespace's labels, for instances that admit namespaces by a selector."""
        self.by_key: dict[str, Service] = {}
        self.by_label: dict[tuple[str, str], dict[str, Service]] = {}
        for service in services:
            self.put(service)

    @classmethod
    def of(cls, snapshot: Snapshot) -> ExposedServices:
        return cls((s.obj for s in snapshot.of(Service).values()), namespace_labels(snapshot))

    def put(self, service: Service) -> None:
        self.remove(service.key)
        self.by_key[service.key] = service
        for pair in service.labels.items():
            self.by_label.setdefault(pair, {})[service.key] = service

    def remove(self, key: str) -> None:
        old = self.by_key.pop(key, None)
        if old is None:
            return
        for pair in old.labels.items():
            holders = self.by_label[pair]
            del holders[key]
            if not holders:
                del self.by_label[pair]

    def matching(self, selector: LabelSelector) -> list[Service]:
        """The Services the selector picks, in key order."""
        candidates: Iterable[Service] = self.by_key.values()
        if selector.match_labels:
            candidates = min(
                (self.by_label.get(pair, {}) for pair in selector.match_labels.items()), key=len
            ).values()
        return sorted((s for s in candidates if selector.matches(s.labels)), key=_service_key)


def _service_key(service: Service) -> str:
    return service.key


def selected_services(
    listener: Listener, balancer: LoadBalancer, services: ExposedServices
) -> list[Service]:
    """The Services a listener forwards to: its own Service's, or its selector's (a
    Gateway's listener: none of its own; its routes name theirs)."""
    if listener.owner.kind is OwnerKind.SERVICE:
        own = services.by_key.get(listener.owner.name)
        return [own] if own is not None else []
    if listener.owner.kind.by_routes:
        return []
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
    def resolved(target: ForwardTarget) -> ResolvedTarget:
        picked = chosen
        if target.selector is not None:
            picked = _admitted(balancer, services, services.matching(target.selector))
        elif target.service is not None:
            named = services.by_key.get(target.service)
            picked = _admitted(balancer, services, [named] if named is not None else [])
        return ResolvedTarget(
            services=tuple(s.key for s in picked),
            backends=backends_for(listener, picked, target_port=target.target_port),
            weight=target.weight,
        )

    return ResolvedRoute(
        route=route,
        targets=tuple(resolved(t) for t in route.targets),
        mirrors=tuple(resolved(m.to) for m in route.mirrors) if route.forwards else (),
    )


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


WEIGHT_SCALE = 10_000
"""The real servers' weights of an L4 rule's targets add up to about this."""


def weighted_backends(targets: Iterable[ResolvedTarget]) -> tuple[Backend, ...]:
    """One L4 rule's targets as real servers: each target's share of the connections
    (its weight among those with a serving backend) is split among its serving backends
    by their own weights, so IPVS's weighted scheduler splits as the rule asks. Draining
    backends keep weight 0; a backend two targets name adds up both shares."""
    targets = [t for t in targets if t.weight > 0]
    serving = [sum(b.weight for b in t.backends) for t in targets]
    total = sum(t.weight for t, s in zip(targets, serving, strict=True) if s)
    chosen: dict[tuple[IPAddress, int], Backend] = {}
    for target, weights in zip(targets, serving, strict=True):
        for backend in target.backends:
            share = 0
            if backend.weight:
                share = max(1, round(WEIGHT_SCALE * target.weight * backend.weight
                                     / (total * weights)))  # fmt: skip
            key = (backend.address, backend.port)
            if key in chosen:
                share = min(MAX_WEIGHT, share + chosen[key].weight)
            chosen[key] = backend.model_copy(update={"weight": share})
    return tuple(chosen[k] for k in sorted(chosen, key=_address_order))


def _address_order(key: tuple[IPAddress, int]) -> tuple[int, int, int]:
    address, port = key
    return (address.version, int(address), port)


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

Touched = Iterable[tuple[str, str]]
"""What changed: (kind, key) pairs, as the change stream names them."""


class NameIndex(Generic[K]):
    """Key -> the names filed under it. Most keys have one name (a Service used by one
    listener, a port held by one), held bare: a set for each of 10,000 keys would cost
    2 MiB. A key left with no name is dropped, so churn does not pile up empty entries."""

    def __init__(self) -> None:
        self._names: dict[K, str | set[str]] = {}

    def add(self, key: K, name: str) -> None:
        held = self._names.get(key)
        if held is None:
            self._names[key] = name
        elif isinstance(held, str):
            if held != name:
                self._names[key] = {held, name}
        else:
            held.add(name)

    def discard(self, key: K, name: str) -> None:
        held = self._names.get(key)
        if held == name:
            del self._names[key]
        elif isinstance(held, set):
            held.discard(name)
            if len(held) == 1:
                self._names[key] = held.pop()

    def get(self, key: K) -> set[str]:
        """The names under `key`, as a new set."""
        held = self._names.get(key)
        if held is None:
            return set()
        return {held} if isinstance(held, str) else set(held)


class Resolver:
    """`resolve`, kept current by the change stream: each update re-resolves only the
    listeners a change can reach, so it costs what changed, not the whole state.

    Which listeners a change reaches: a changed listener; every listener of a changed
    instance; for a changed Service, the listeners that forwarded to it, its own
    listeners, those whose rules name it, and the listeners whose selectors (their own
    or their rules') may pick it now (indexed by one `match_labels` pair each; selectors
    without one are always looked at); and every listener that shares a port with one of
    those, as a claim may move. A Namespace change (whom instances admit) resolves
    everything again. Listeners that did not change keep their very objects, so the caches
    downstream skip them by identity. The result equals `resolve` of the same snapshot (a
    property test holds it to that).
    """

    def __init__(self, node_group: str | None = None) -> None:
        self.node_group = node_group
        self.state: DesiredState | None = None
        self._reset()

    def _reset(self) -> None:
        self._balancers: dict[str, LoadBalancer] = {}
        self._listeners: dict[str, Listener] = {}
        self._services = ExposedServices(())
        self._of_balancer: NameIndex[str] = NameIndex()
        self._port_of: dict[str, PortKey] = {}
        self._at_port: NameIndex[PortKey] = NameIndex()
        self._resolved: dict[str, ResolvedListener] = {}
        self._rejected: dict[str, Rejected] = {}
        self._users: NameIndex[str] = NameIndex()
        """Service key -> the listeners that forward to it, own it or name it in a rule."""
        self._by_pair: NameIndex[tuple[str, str]] = NameIndex()
        """A label pair -> listeners with a selector that requires it."""
        self._unindexed: set[str] = set()
        """Listeners with a selector that requires no label pair."""
        self._certificates: dict[str, Certificate] = {}
        self._node_groups: dict[str, NodeGroup] = {}
        self._redone: set[str] | None = None
        """The listeners this update resolved again (None: all of them)."""
        self._names: set[str] = set()
        self._order: list[str] = []
        """The resolved listeners' names as last published, and sorted."""

    def update(self, snapshot: Snapshot, touched: Touched | None) -> DesiredState:
        """The desired state of `snapshot`, which is the last one's moved past `touched`
        (None: anything may have changed, resolve it all)."""
        pairs = None if touched is None or self.state is None else set(touched)
        if pairs is None or any(kind == "Namespace" for kind, _ in pairs):
            return self._everything(snapshot)
        self._redone = set()
        dirty: set[str] = set()
        for kind, key in sorted(pairs):
            if kind == LoadBalancer.kind:
                self._balancer_changed(snapshot, key, dirty)
            elif kind == Listener.kind:
                self._listener_changed(snapshot, key, dirty)
            elif kind == Service.kind:
                self._service_changed(snapshot, key, dirty)
        kinds = {kind for kind, _ in pairs}
        if Certificate.kind in kinds:
            self._certificates = {k: s.obj for k, s in snapshot.of(Certificate).items()}
        if NodeGroup.kind in kinds:
            self._node_groups = {k: s.obj for k, s in snapshot.of(NodeGroup).items()}
        self._reclaim(dirty)
        return self._publish(snapshot.revision)

    # -- everything, once ------------------------------------------------------------------

    def _everything(self, snapshot: Snapshot) -> DesiredState:
        self._reset()
        self._services = ExposedServices.of(snapshot)
        self._balancers = {k: s.obj for k, s in snapshot.of(LoadBalancer).items()
                           if self._in_scope(s.obj)}  # fmt: skip
        for key, stored in snapshot.of(Listener).items():
            self._listeners[key] = stored.obj
            self._of_balancer.add(stored.obj.load_balancer, key)
        self._certificates = {k: s.obj for k, s in snapshot.of(Certificate).items()}
        self._node_groups = {k: s.obj for k, s in snapshot.of(NodeGroup).items()}
        self._reclaim(set(self._listeners))
        self._redone = None  # everything
        return self._publish(snapshot.revision)

    def _in_scope(self, balancer: LoadBalancer) -> bool:
        return self.node_group is None or balancer.node_group == self.node_group

    # -- what a change reaches -------------------------------------------------------------

    def _balancer_changed(self, snapshot: Snapshot, key: str, dirty: set[str]) -> None:
        balancer = snapshot.get(LoadBalancer, key)
        if balancer is not None and self._in_scope(balancer):
            self._balancers[key] = balancer
        else:
            self._balancers.pop(key, None)
        dirty |= self._of_balancer.get(key)

    def _listener_changed(self, snapshot: Snapshot, key: str, dirty: set[str]) -> None:
        old = self._listeners.pop(key, None)
        if old is not None:
            self._of_balancer.discard(old.load_balancer, key)
        new = snapshot.get(Listener, key)
        if new is not None:
            self._listeners[key] = new
            self._of_balancer.add(new.load_balancer, key)
        dirty.add(key)

    def _service_changed(self, snapshot: Snapshot, key: str, dirty: set[str]) -> None:
        dirty |= self._users.get(key)
        service = snapshot.get(Service, key)
        if service is None:
            self._services.remove(key)
            return
        self._services.put(service)
        dirty |= self._unindexed
        for pair in service.labels.items():
            dirty |= self._by_pair.get(pair)

    # -- re-resolving ----------------------------------------------------------------------

    def _reclaim(self, dirty: set[str]) -> None:
        """Resolve the `dirty` listeners again, with every listener that shares a port (old
        or new) with one of them: who holds a port may change."""
        claimants = set(dirty)
        for name in dirty:
            old_port = self._port_of.pop(name, None)
            if old_port is not None:
                self._at_port.discard(old_port, name)
                claimants |= self._at_port.get(old_port)
            listener = self._listeners.get(name)
            balancer = self._balancers.get(listener.load_balancer) if listener else None
            if listener is not None and balancer is not None:
                port = self._port_of[name] = port_key(listener, balancer)
                claimants |= self._at_port.get(port)
                self._at_port.add(port, name)
        before = {name: self._forget(name) for name in claimants}
        if self._redone is not None:
            self._redone |= claimants
        listeners = [self._listeners[n] for n in claimants if n in self._listeners]
        if self.node_group is not None:  # an LB node sees its own group's listeners only
            listeners = [li for li in listeners if li.load_balancer in self._balancers]
        winners, rejected = claim_ports(self._balancers, listeners)
        for item in rejected:
            self._rejected[item.listener] = item
        for listener, vip in winners:
            balancer = self._balancers[listener.load_balancer]
            resolved = resolved_listener(listener, balancer, vip, self._services)
            old = before.get(listener.name)
            self._remember(old if old == resolved else resolved)

    def _forget(self, name: str) -> ResolvedListener | None:
        """Take a listener out of the result and the indexes; what it was resolved to."""
        self._rejected.pop(name, None)
        old = self._resolved.pop(name, None)
        if old is None:
            return None
        for key in self._used_by(old):
            self._users.discard(key, name)
        for selector in _selectors(old.listener):
            index = _index_pair(selector)
            if index is None:
                self._unindexed.discard(name)
            else:
                self._by_pair.discard(index, name)
        return old

    def _remember(self, resolved: ResolvedListener) -> None:
        name = resolved.listener.name
        self._resolved[name] = resolved
        for key in self._used_by(resolved):
            self._users.add(key, name)
        for selector in _selectors(resolved.listener):
            index = _index_pair(selector)
            if index is None:
                self._unindexed.add(name)
            else:
                self._by_pair.add(index, name)

    @staticmethod
    def _used_by(resolved: ResolvedListener) -> set[str]:
        used = set(resolved.services)
        for route in resolved.routes:
            used.update(route.services)
            named = (*route.route.targets, *(m.to for m in route.route.mirrors))
            used.update(t.service for t in named if t.service is not None)
        if resolved.listener.owner.kind is OwnerKind.SERVICE:
            used.add(resolved.listener.owner.name)
        return used

    def _publish(self, revision: int) -> DesiredState:
        previous = self.state
        if self._resolved.keys() != self._names:  # most changes keep the names: no sort
            self._order, self._names = sorted(self._resolved), set(self._resolved)
        listeners = _in_order(self._resolved, self._order)
        rejected = tuple(self._rejected[n] for n in sorted(self._rejected))
        if previous is not None:  # unchanged parts stay the very objects
            if listeners == previous.listeners:
                listeners = previous.listeners
            if rejected == previous.rejected:
                rejected = previous.rejected
        redone = self._redone
        self.state = DesiredState(
            revision, listeners, rejected, self._certificates, self._node_groups,
            since=previous.revision if previous is not None and redone is not None else None,
            changed=frozenset(redone or ()), by_name=dict(self._resolved),
        )  # fmt: skip
        return self.state


def _in_order(by_name: Mapping[str, T], names: list[str]) -> tuple[T, ...]:
    """`by_name`'s values in the order of `names` (all of its keys), at C speed."""
    if len(names) < 2:
        return tuple(by_name[n] for n in names)
    found: tuple[T, ...] = itemgetter(*names)(by_name)
    return found


def _selectors(listener: Listener) -> list[LabelSelector]:
    """The selectors that decide which Services a listener (or one of its rules) picks."""
    found = [listener.selector] if listener.selector is not None else []
    found += [
        t.selector
        for route in listener.routes
        for t in (*route.targets, *(m.to for m in route.mirrors))
        if t.selector
    ]
    return found


def _index_pair(selector: LabelSelector) -> tuple[str, str] | None:
    """The one label pair a selector is indexed by (any it requires would do)."""
    return min(selector.match_labels.items()) if selector.match_labels else None
