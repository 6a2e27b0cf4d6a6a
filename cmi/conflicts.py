"""Step: which listeners lose their VIP:port to an older one, told to whoever owns them.

The rule itself is the store's (`slb.resolve.claim_ports`: the data planes apply the
same one); this step turns its verdicts into what cmi reports: each listener's state for
the console, and for each Service the listeners it asked for that are not served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cmi.build import Event
from cmi.mirror import service_owner
from slb.model import Listener, LoadBalancer
from slb.resolve import claim_ports

SERVED = "served"


@dataclass(frozen=True)
class PortConflicts:
    listener_status: dict[str, str]
    """Every listener: `SERVED` or why it is not."""
    by_service: dict[str, dict[str, str]]
    """Service -> its listener -> why it is not served (not those only waiting for a VIP)."""


def port_conflicts(
    balancers: Mapping[str, LoadBalancer], listeners: Mapping[str, Listener]
) -> PortConflicts:
    """Every listener judged at once (`PortBook` keeps the verdicts between turns)."""
    return PortBook().judge(balancers, listeners, None)


class PortBook:
    """Every listener's verdict, kept between turns: a turn judges again only the places
    (a VIP, or an instance waiting for one) where a listener or an instance changed;
    judging them all took about 100 ms a turn at 10,000 listeners."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.conflicts = PortConflicts({}, {})
        self._judged: dict[str, tuple[str, str, str | None]] = {}
        """Listener -> (its place, its instance, its Service) when last judged."""
        self._at: dict[str, set[str]] = {}
        """Place -> the listeners judged there."""
        self._on: dict[str, set[str]] = {}
        """Instance -> its listeners."""

    def judge(
        self,
        balancers: Mapping[str, LoadBalancer],
        listeners: Mapping[str, Listener],
        touched: set[tuple[str, str]] | None,
    ) -> PortConflicts:
        """The verdicts after the listeners and instances `touched` ((kind, key)) changed;
        None: judge every listener afresh (after a full read)."""
        if touched is None:
            self._clear()
            names = set(listeners)
        else:
            names = {key for kind, key in touched if kind == Listener.kind}
            for kind, key in touched:
                if kind == LoadBalancer.kind:
                    names |= self._on.get(key, set())
            places = {self._judged[n][0] for n in names if n in self._judged}
            places |= {_place(listeners[n], balancers) for n in names if n in listeners}
            for place in places:
                names |= self._at.get(place, set())
        status, by_service = self.conflicts.listener_status, self.conflicts.by_service
        for name in names:
            self._forget(name)
        judged = [listeners[n] for n in names if n in listeners]
        for listener in judged:
            entry = (_place(listener, balancers), listener.load_balancer, service_owner(listener))
            self._judged[listener.name] = entry
            self._at.setdefault(entry[0], set()).add(listener.name)
            self._on.setdefault(entry[1], set()).add(listener.name)
            status[listener.name] = SERVED
        _, rejected = claim_ports(balancers, judged)
        for rejection in rejected:
            status[rejection.listener] = rejection.reason
            owner = self._judged[rejection.listener][2]
            if owner is not None and not rejection.pending:
                by_service.setdefault(owner, {})[rejection.listener] = rejection.reason
        return self.conflicts

    def _forget(self, name: str) -> None:
        self.conflicts.listener_status.pop(name, None)
        judged = self._judged.pop(name, None)
        if judged is None:
            return
        place, instance, owner = judged
        _discard(self._at, place, name)
        _discard(self._on, instance, name)
        by_service = self.conflicts.by_service
        if owner is not None and name in by_service.get(owner, {}):
            del by_service[owner][name]
            if not by_service[owner]:
                del by_service[owner]


def _place(listener: Listener, balancers: Mapping[str, LoadBalancer]) -> str:
    """Where a listener's port is claimed: its instance's VIP (instances with one VIP share
    it), or the instance itself while it has none (or is missing)."""
    balancer = balancers.get(listener.load_balancer)
    if balancer is None or balancer.vip is None:
        return f"instance {listener.load_balancer}"
    return str(balancer.vip)


def _discard(index: dict[str, set[str]], key: str, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


def conflict_events(conflicts: Mapping[str, str]) -> list[Event]:
    """A Warning for each of a Service's listeners that is not served, and why."""
    return [
        Event("Warning", "ListenerConflict", f"listener {listener}: {reason}")
        for listener, reason in conflicts.items()
    ]
