"""Reconcile: the smallest ordered list of IPVS operations from what is to what should be. Pure.

Inputs are the desired services (the plan, with health checks' weights applied), what the
kernel holds, the ownership record, and the real servers being drained. The rules:

- Only services in the ownership record are touched. A service someone else made is
  reported: `foreign` if openslb does not want its key, `blocked` if it does.
- A service that is wanted and missing is added, then its real servers; one whose
  scheduler, flags or persistence differ is changed in place (set, never delete + add).
- A real server that is wanted is added or changed. One that is no longer wanted drains:
  weight 0 (no new connections, established ones carry on), deleted once it has no active
  connection or the drain timeout has passed. Wanted again while draining, it is simply
  set back to its weight.
- A service openslb owns and no longer wants (a listener removed, a Service unlabelled)
  drains like its real servers: those with connections go to weight 0 and the service
  stays until they are idle or the drain timeout has passed; then it is deleted. One with
  no connection is deleted at once.
- Order: service deletions first; then per service, its add or set, then its real
  servers: additions before changes before drains and deletions, so a service never goes
  empty on the way.

An equal service (tuple equality, in C) costs nothing, so a run over 1,000 unchanged
services is cheap, and a second run after a successful apply yields no operation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from l4.ipvs import (
    AddDest,
    AddService,
    Counters,
    DeleteDest,
    DeleteService,
    Dest,
    KernelState,
    Op,
    ServiceKey,
    SetDest,
    SetService,
    VirtualService,
    sort_dests,
)

DrainKey = tuple[ServiceKey, tuple[str, int]]
"""A real server of a service: (service key, (address, port))."""

_NO_CONNECTIONS = Counters()


@dataclass(frozen=True)
class Reconciled:
    ops: tuple[Op, ...]
    owned: frozenset[ServiceKey]
    """The ownership record once every operation has been applied."""
    claimed: frozenset[ServiceKey] = frozenset()
    """Services the operations create. Record them before applying: a crash in between
    must not leave a service openslb made and would then take for someone else's."""
    draining: dict[DrainKey, float] = field(default_factory=dict)
    """Real servers at weight 0 waiting for their connections to end, since when."""
    foreign: tuple[ServiceKey, ...] = ()
    blocked: tuple[ServiceKey, ...] = ()


def reconcile(
    desired: Mapping[ServiceKey, VirtualService],
    kernel: KernelState,
    owned: Collection[ServiceKey],
    *,
    draining: Mapping[DrainKey, float],
    now: float,
    drain_timeout: float,
    scope: Iterable[ServiceKey] | None = None,
) -> Reconciled:
    """What to do, in order. With `scope`, only those services are considered (the caller
    read them from the kernel just now); the record and drains of the others carry over."""
    if scope is None:
        keys = sorted(desired.keys() | kernel.services.keys() | set(owned))
    else:
        keys = sorted(set(scope))
    in_scope = set(keys)
    new_owned = set(owned)
    kept = {k: t for k, t in draining.items() if k[0] not in in_scope}
    drains = _Drains(kernel.counters, draining, kept, now, drain_timeout)
    deletions: list[Op] = []
    changes: list[Op] = []
    claimed: set[ServiceKey] = set()
    foreign: list[ServiceKey] = []
    blocked: list[ServiceKey] = []
    for key in keys:
        want = desired.get(key)
        have = kernel.services.get(key)
        if have is not None and key not in new_owned:
            (blocked if want is not None else foreign).append(key)
            continue
        if want is None:
            leaving = _leaving(key, have, drains) if have is not None else None
            if leaving is not None:
                changes += leaving  # drains, and stays owned meanwhile
                continue
            if have is not None:
                deletions.append(DeleteService(key))
            new_owned.discard(key)
            continue
        if have is None:
            changes.append(AddService(want._replace(dests=())))
            changes += (AddDest(key, dest) for dest in want.dests)
            claimed.add(key)
            new_owned.add(key)
            continue
        if want == have:
            continue
        if want.attributes() != have.attributes():
            changes.append(SetService(want._replace(dests=())))
        if want.dests != have.dests:
            changes += _real_servers(key, want.dests, have.dests, drains)
    return Reconciled(
        ops=tuple(deletions + changes),
        owned=frozenset(new_owned),
        claimed=frozenset(claimed),
        draining=drains.after,
        foreign=tuple(foreign),
        blocked=tuple(blocked),
    )


@dataclass
class _Drains:
    counters: Mapping[DrainKey, Counters]
    before: Mapping[DrainKey, float]
    after: dict[DrainKey, float]
    now: float
    timeout: float

    def leave(self, key: ServiceKey, dest: Dest) -> Op | None:
        """A real server no longer wanted: delete it, or drain it (None: keep draining)."""
        drain_key = (key, dest.key)
        active = self.counters.get(drain_key, _NO_CONNECTIONS).active
        started = self.before.get(drain_key, self.now)
        if active == 0 or self.now - started >= self.timeout:
            return DeleteDest(key, dest)
        self.after[drain_key] = started
        return SetDest(key, dest._replace(weight=0)) if dest.weight != 0 else None


def _leaving(key: ServiceKey, have: VirtualService, drains: _Drains) -> list[Op] | None:
    """A service no longer wanted: its real servers' drains (weight 0 for those with
    connections, the idle ones deleted), or None when none has a connection left."""
    ops = [op for dest in have.dests if (op := drains.leave(key, dest)) is not None]
    if all(isinstance(op, DeleteDest) for op in ops) and len(ops) == len(have.dests):
        return None
    return ops


def _real_servers(
    key: ServiceKey, want: tuple[Dest, ...], have: tuple[Dest, ...], drains: _Drains
) -> list[Op]:
    present = {dest.key: dest for dest in have}
    wanted = {dest.key for dest in want}
    adds: list[Op] = []
    sets: list[Op] = []
    leaving: list[Op] = []
    for dest in want:
        old = present.get(dest.key)
        if old is None:
            adds.append(AddDest(key, dest))
        elif old != dest:
            sets.append(SetDest(key, dest))
    for dest in have:
        if dest.key not in wanted and (op := drains.leave(key, dest)) is not None:
            leaving.append(op)
    return adds + sets + leaving


def update_view(kernel: KernelState, ops: Iterable[Op]) -> None:
    """Change `kernel` in place to what it holds once `ops` succeeded.

    The agent keeps its view of the kernel this way instead of dumping it after every
    change; new real servers start with no connections, the others keep their counts.
    """
    services, counters = kernel.services, kernel.counters
    touched: dict[ServiceKey, dict[tuple[str, int], Dest]] = {}

    def dests_of(key: ServiceKey) -> dict[tuple[str, int], Dest]:
        if key not in touched:
            touched[key] = {d.key: d for d in services[key].dests}
        return touched[key]

    for op in ops:
        match op:
            case DeleteService(key):
                gone = services.pop(key, None)
                touched.pop(key, None)
                for dest in gone.dests if gone else ():
                    counters.pop((key, dest.key), None)
            case AddService(service) | SetService(service):
                old = services.get(service.key)
                services[service.key] = service._replace(dests=old.dests if old else ())
            case AddDest(key, dest) | SetDest(key, dest):
                dests_of(key)[dest.key] = dest
                counters.setdefault((key, dest.key), _NO_CONNECTIONS)
            case DeleteDest(key, dest):
                dests_of(key).pop(dest.key, None)
                counters.pop((key, dest.key), None)
    for key, dests in touched.items():
        services[key] = services[key]._replace(dests=sort_dests(dests.values()))


def rescoped(
    known: set[ServiceKey], scope: set[ServiceKey] | None, found: Iterable[ServiceKey]
) -> set[ServiceKey]:
    """What a reconcile of `scope` (None: everything) found, over what was known of the rest."""
    return set(found) if scope is None else (known - scope) | set(found)
