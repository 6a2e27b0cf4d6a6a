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
    _, rejected = claim_ports(balancers, listeners.values())
    status = dict.fromkeys(listeners, SERVED)
    by_service: dict[str, dict[str, str]] = {}
    for rejection in rejected:
        status[rejection.listener] = rejection.reason
        owner = service_owner(listeners[rejection.listener])
        if owner is not None and not rejection.pending:
            by_service.setdefault(owner, {})[rejection.listener] = rejection.reason
    return PortConflicts(status, by_service)


def conflict_events(conflicts: Mapping[str, str]) -> list[Event]:
    """A Warning for each of a Service's listeners that is not served, and why."""
    return [
        Event("Warning", "ListenerConflict", f"listener {listener}: {reason}")
        for listener, reason in conflicts.items()
    ]
