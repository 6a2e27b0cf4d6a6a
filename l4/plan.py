"""Plan: the desired state -> the IPVS virtual services one LB node must hold. Pure.

Every node of a node group computes the same plan from the same revision, so the group's
IPVS tables agree. The rules:

- A node programs the listeners whose load balancer's `node_group` lists it.
- TCP and UDP listeners forward straight to their backends with the listener's method
  (NAT by default). DR and TUN deliver the packet unchanged, so a backend whose port
  differs from the listener's cannot be reached by them and is left out (reported);
  neither can a backend of the other address family.
- HTTP, HTTPS and GRPC listeners forward to the group's Envoys: one real server per node,
  at the node's address and the listener's port, by direct routing. Envoy binds VIP:port
  (freebind) and every node holds the VIP on its dummy interface, so the packet must keep
  the VIP as its destination, which NAT would rewrite. Their scheduler is `mh` with
  `mh-port` (Maglev hashing over source address and port): every node that builds the
  same table picks the same Envoy for a flow, so a flow survives ECMP moving it to another
  LB node. The listener's own scheduler is Envoy's business, per request. The group's
  `envoy_check` checks each Envoy (e.g. its /ready), so a dead node's share is rehashed.
- `sh` and `mh` get their `-fallback` flag: a real server at weight 0 (draining, or
  failing its health check) would otherwise keep its share of the hash and black-hole it.
- Source-IP persistence becomes the IPVS persistence timeout (TCP/UDP listeners; at L7 it
  is Envoy's).
- A TCP or UDP listener's `max_connections` becomes each real server's upper connection
  threshold: the limit split evenly, rounded up, over the real servers that take new
  connections (weight above 0). IPVS has no per-service limit; when every real server is
  at its threshold, IPVS schedules nothing and the node refuses the connection. Its
  `connections_per_second` is the VIP guard's (`l4.firewall`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from l4.firewall import Rate, SourceACL
from l4.ipvs import Dest, ServiceKey, VirtualService, address_order, address_text, sort_dests
from slb.model import (
    Forwarding,
    HealthCheck,
    Listener,
    NodeGroup,
    PersistenceMode,
    Scheduler,
)
from slb.resolve import DesiredState, ResolvedListener

L7_SCHEDULER = "mh"
L7_FLAGS = ("mh-fallback", "mh-port")
_FALLBACK = {Scheduler.SH: ("sh-fallback",), Scheduler.MH: ("mh-fallback",)}


Sources = tuple[str, str, tuple[str, ...]]
"""What a virtual service was planned from: listener, load balancer, Service keys."""


@dataclass(frozen=True)
class Changed:
    """What the store's change stream says changed since a previous plan was made.

    With it, `plan` re-plans only the listeners it touches and hands the others over as
    the very same objects, so the agent spots what to reconcile by identity: a change at
    1,000 listeners costs what it costs at ten.
    """

    listeners: frozenset[str] = frozenset()
    load_balancers: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    node_groups: bool = False
    """Membership, node addresses and namespaces' labels (whom selectors may pick) feed
    every plan: any node group or Namespace change re-plans all."""

    @classmethod
    def from_ops(cls, ops: Iterable[tuple[str, str, str]]) -> Changed:
        """From change-stream entries (op, kind, key)."""
        keys: dict[str, set[str]] = {"Listener": set(), "LoadBalancer": set(), "Service": set()}
        node_groups = False
        for _, kind, key in ops:
            if kind in ("NodeGroup", "Namespace"):  # a namespace's labels: whom selectors pick
                node_groups = True
            elif kind in keys:
                keys[kind].add(key)
        return cls(
            frozenset(keys["Listener"]),
            frozenset(keys["LoadBalancer"]),
            frozenset(keys["Service"]),
            node_groups,
        )

    def touches(self, sources: Sources) -> bool:
        listener, balancer, services = sources
        return (
            listener in self.listeners
            or balancer in self.load_balancers
            or not self.services.isdisjoint(services)
        )


@dataclass(frozen=True)
class IPVSPlan:
    """What one LB node must program, by virtual service."""

    node: str
    group: str | None
    revision: int
    services: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    sources: dict[ServiceKey, Sources] = field(default_factory=dict)
    health_checks: dict[ServiceKey, HealthCheck] = field(default_factory=dict)
    """Checks of TCP listeners' backends, run from this node."""
    notes: dict[ServiceKey, tuple[str, ...]] = field(default_factory=dict)
    """What planning a virtual service had to leave out, and why."""
    layer7: frozenset[ServiceKey] = frozenset()
    """Services that forward to the group's Envoys (HTTP, HTTPS and GRPC listeners)."""
    vips: tuple[str, ...] = ()
    node_problem: str | None = None
    acls: dict[ServiceKey, SourceACL] = field(default_factory=dict)
    """Listeners' (allowed, denied) client networks, for the VIP guard (`l4.firewall`)."""
    rates: dict[ServiceKey, Rate] = field(default_factory=dict)
    """TCP and UDP listeners' new connections a second, for the VIP guard."""
    keys: dict[str, ServiceKey] = field(default_factory=dict)
    """Each planned listener's virtual service, by listener name."""

    @property
    def guarded(self) -> set[ServiceKey]:
        """The TCP and UDP listeners whose access control or rate only the guard enforces."""
        return {key for key in (*self.acls, *self.rates) if key not in self.layer7}

    def charted(self) -> dict[ServiceKey, str]:
        """The TCP and UDP listeners' services, by listener: those the L4 tier charts."""
        return {k: src[0] for k, src in self.sources.items() if k not in self.layer7}

    @property
    def problems(self) -> tuple[str, ...]:
        own = (self.node_problem,) if self.node_problem else ()
        return own + tuple(note for notes in self.notes.values() for note in notes)

    def to_json(self) -> dict[str, Any]:
        """The plan as the golden files hold it."""
        services = []
        for key in sorted(self.services, key=_key_order):
            service = self.services[key]
            check = self.health_checks.get(key)
            services.append(
                {
                    "listener": self.sources[key][0],
                    "protocol": key.protocol,
                    "vip": key.address,
                    "port": key.port,
                    "scheduler": service.scheduler,
                    "flags": list(service.flags),
                    "persistence_timeout": service.timeout,
                    "health_check": check.model_dump(mode="json") if check else None,
                    "real_servers": [_dest_json(d) for d in service.dests],
                }
            )
            if key in self.acls:
                services[-1]["allowed_sources"], services[-1]["denied_sources"] = self.acls[key]
            if key in self.rates:
                services[-1]["connections_per_second"] = self.rates[key]
        return {
            "node": self.node,
            "group": self.group,
            "revision": self.revision,
            "vips": list(self.vips),
            "services": services,
            "problems": list(self.problems),
        }


def node_group_of(node_groups: Mapping[str, NodeGroup], node: str) -> list[str]:
    """The node groups that list `node` (normally one)."""
    return sorted(
        name for name, group in node_groups.items() if any(n.name == node for n in group.nodes)
    )


def plan(
    state: DesiredState,
    node: str,
    group: str | None,
    *,
    previous: IPVSPlan | None = None,
    changed: Changed | None = None,
) -> IPVSPlan:
    """This node's IPVS plan. With no group (the node belongs to none), it holds nothing.

    Given the `previous` plan and what `changed` since, listeners untouched by the change
    keep their previous virtual services (the same objects); the result equals a full plan.
    """
    node_group = state.node_groups.get(group) if group else None
    if node_group is None or not any(n.name == node for n in node_group.nodes):
        where = f"node group {group!r}" if group else "any node group"
        return IPVSPlan(
            node, group, state.revision, node_problem=f"node {node!r} is not in {where}"
        )
    if changed is None or changed.node_groups or not _same_node(previous, node, group):
        previous = None
    if previous is not None and state.since is not None and state.since == previous.revision:
        return _replanned(state, node_group, previous)
    acc = _Planning()
    for item in sorted(state.for_node_group(group or ""), key=_service_order):
        listener = item.listener
        key = ServiceKey(listener.protocol.transport, address_text(item.vip), listener.port)
        if previous is not None and changed is not None:
            before = previous.sources.get(key)
            sources = (listener.name, listener.load_balancer, item.services)
            if (
                before is not None
                and before[0] == listener.name
                and not changed.touches(before)
                and not changed.touches(sources)
            ):
                acc.keep(previous, key, listener.name, sources)
                _guard_settings(key, listener, acc.acls, acc.rates)
                continue
        acc.add(key, item, node_group)
    return acc.plan(node, node_group.name, state.revision)


def _replanned(state: DesiredState, node_group: NodeGroup, previous: IPVSPlan) -> IPVSPlan:
    """The previous plan with only the listeners the resolver says it resolved again
    (`DesiredState.changed`) planned afresh: the rest are the same objects, and a change
    costs what it touched however many listeners the node serves."""
    acc = _Planning.of(previous)
    for name in state.changed:
        acc.drop(name)
    for name in sorted(state.changed):
        item = state.by_name.get(name)
        if item is not None and item.node_group == node_group.name:
            key = ServiceKey(item.listener.protocol.transport, address_text(item.vip),
                             item.listener.port)  # fmt: skip
            acc.add(key, item, node_group)
    return acc.plan(previous.node, node_group.name, state.revision)


@dataclass
class _Planning:
    """A plan being made, by virtual service."""

    services: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    sources: dict[ServiceKey, Sources] = field(default_factory=dict)
    checks: dict[ServiceKey, HealthCheck] = field(default_factory=dict)
    notes: dict[ServiceKey, tuple[str, ...]] = field(default_factory=dict)
    layer7: set[ServiceKey] = field(default_factory=set)
    acls: dict[ServiceKey, SourceACL] = field(default_factory=dict)
    rates: dict[ServiceKey, Rate] = field(default_factory=dict)
    keys: dict[str, ServiceKey] = field(default_factory=dict)

    @classmethod
    def of(cls, planned: IPVSPlan) -> _Planning:
        return cls(
            dict(planned.services), dict(planned.sources), dict(planned.health_checks),
            dict(planned.notes), set(planned.layer7), dict(planned.acls), dict(planned.rates),
            dict(planned.keys),
        )  # fmt: skip

    def drop(self, name: str) -> None:
        """Forget listener `name`'s virtual service, if it had one."""
        key = self.keys.pop(name, None)
        if key is None:
            return
        for by_key in (self.services, self.sources, self.checks, self.notes, self.acls,
                       self.rates):  # fmt: skip
            by_key.pop(key, None)
        self.layer7.discard(key)

    def keep(self, previous: IPVSPlan, key: ServiceKey, name: str, sources: Sources) -> None:
        """Take a listener's virtual service as the previous plan has it."""
        self.keys[name], self.sources[key] = key, sources
        self.services[key] = previous.services[key]
        if key in previous.layer7:
            self.layer7.add(key)
        if key in previous.health_checks:
            self.checks[key] = previous.health_checks[key]
        if key in previous.notes:
            self.notes[key] = previous.notes[key]

    def add(self, key: ServiceKey, item: ResolvedListener, node_group: NodeGroup) -> None:
        """Plan a listener's virtual service afresh."""
        listener = item.listener
        self.keys[listener.name] = key
        self.sources[key] = (listener.name, listener.load_balancer, item.services)
        _guard_settings(key, listener, self.acls, self.rates)
        if listener.protocol.is_l7:
            self.layer7.add(key)
            self.services[key] = VirtualService(
                key,
                L7_SCHEDULER,
                L7_FLAGS,
                0,
                sort_dests(
                    Dest(address_text(n.address), listener.port, 1, "dr")
                    for n in node_group.nodes
                    if n.address.version == item.vip.version
                ),
            )
            if node_group.envoy_check is not None:
                self.checks[key] = node_group.envoy_check
            return
        found: list[str] = []
        self.services[key] = _l4_service(key, item, found)
        if found:
            self.notes[key] = tuple(found)
        if listener.health_check is not None:
            self.checks[key] = listener.health_check

    def plan(self, node: str, group: str, revision: int) -> IPVSPlan:
        vips = sorted({key.address for key in self.services}, key=address_order)
        return IPVSPlan(
            node, group, revision, self.services, self.sources, self.checks, self.notes,
            frozenset(self.layer7), tuple(vips), acls=self.acls, rates=self.rates,
            keys=self.keys,
        )  # fmt: skip


def unguarded(planned: IPVSPlan) -> IPVSPlan:
    """The plan for a node without the VIP guard (`l4.vip_guard` off): a TCP or UDP listener
    with access control or a connection rate is left out, with a note, rather than served
    open to every client or unlimited; an HTTP, HTTPS or GRPC listener's Envoys enforce
    their own."""
    refused = planned.guarded
    if not refused:
        return planned
    notes = dict(planned.notes)
    for key in refused:
        needs = [
            *(["its allowed or denied client networks"] if key in planned.acls else []),
            *(["its connections_per_second"] if key in planned.rates else []),
        ]
        notes[key] = (
            f"listener {planned.sources[key][0]!r}: not served: {' and '.join(needs)} "
            "need the VIP guard (l4.vip_guard), which is off on this node",
        )
    services = {k: v for k, v in planned.services.items() if k not in refused}
    return replace(
        planned,
        services=services,
        sources={k: v for k, v in planned.sources.items() if k not in refused},
        health_checks={k: v for k, v in planned.health_checks.items() if k not in refused},
        notes=notes,
        acls={k: v for k, v in planned.acls.items() if k not in refused},
        rates={},
        vips=tuple(sorted({key.address for key in services}, key=address_order)),
    )


def _guard_settings(
    key: ServiceKey,
    listener: Listener,
    acls: dict[ServiceKey, SourceACL],
    rates: dict[ServiceKey, Rate],
) -> None:
    """What the VIP guard enforces for a listener: its client networks, and a TCP or UDP
    listener's connection rate (Envoy limits an L7 listener's own)."""
    if listener.allowed_sources or listener.denied_sources:
        acls[key] = (
            tuple(str(n) for n in listener.allowed_sources),
            tuple(str(n) for n in listener.denied_sources),
        )
    if listener.limits.connections_per_second and not listener.protocol.is_l7:
        rates[key] = listener.limits.connections_per_second


def _same_node(previous: IPVSPlan | None, node: str, group: str | None) -> bool:
    return previous is not None and (previous.node, previous.group) == (node, group)


def _service_order(item: ResolvedListener) -> tuple[tuple[int, bytes], int, str]:
    return (address_order(str(item.vip)), item.listener.port, item.listener.protocol.transport)


def _key_order(key: ServiceKey) -> tuple[tuple[int, bytes], int, str]:
    """The order of `_service_order`, from a virtual service's key."""
    return (address_order(key.address), key.port, key.protocol)


def _l4_service(key: ServiceKey, item: ResolvedListener, problems: list[str]) -> VirtualService:
    listener = item.listener
    forwarding = listener.forwarding
    scheduler = listener.scheduler
    flags = _FALLBACK.get(scheduler, ())
    timeout = 0
    if listener.persistence.mode is PersistenceMode.SOURCE_IP:
        timeout = listener.persistence.timeout_s
    dests = []
    for backend in item.backends:
        where = f"listener {listener.name!r}: backend {backend.address}:{backend.port}"
        if backend.address.version != item.vip.version:
            problems.append(f"{where} is IPv{backend.address.version}, the VIP is not")
            continue
        port = backend.port
        if forwarding is not Forwarding.NAT:
            if backend.port != listener.port:
                problems.append(
                    f"{where} left out: {forwarding.value} forwarding keeps the port "
                    f"({listener.port}); only nat can change it"
                )
                continue
            port = listener.port
        dests.append(Dest(address_text(backend.address), port, backend.weight, forwarding.value))
    if listener.limits.max_connections:
        serving = sum(1 for d in dests if d.weight > 0) or 1
        upper = -(-listener.limits.max_connections // serving)
        dests = [d._replace(upper=upper) for d in dests]
    return VirtualService(key, scheduler.value, flags, timeout, sort_dests(dests))


def _dest_json(dest: Dest) -> dict[str, Any]:
    """A real server as the golden files hold it: the threshold only when there is one."""
    return {k: v for k, v in dest._asdict().items() if k != "upper" or v}
