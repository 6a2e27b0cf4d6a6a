"""Pure: is a listener served? One rule for cmi's `openslb.io/Programmed` condition, the
console's listener states and its status page, over the same reports.

Each LB node's l4 agent and each Envoy (through the xDS server) report the revision they
serve and their last error (`slb.storage.status`). A listener must be live, at a revision at
least as new as the one that last changed it (its instance, its certificates), on:

- every LB node of its node group (those the group lists, and any that reports serving the
  group), for every listener: IPVS carries L7 listeners to the group's Envoys too;
- every Envoy of the group, at least one, for HTTP, HTTPS and GRPC listeners.

A group with no LB nodes is an Envoy-only group (its Envoys are reached directly, e.g.
behind an external L4 or anycast): it serves L7 listeners and no L4 one, so a TCP or UDP
port there is pending, saying why. An error reported for a revision at or past the needed
one (a netlink failure, an Envoy NACK) makes the listener an error, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from slb.integrity import HOLDING
from slb.model import NodeGroup
from slb.storage.status import TierStatus

State = Literal["served", "pending", "error"]
SEVERITY: dict[State, int] = {"served": 0, "pending": 1, "error": 2}


@dataclass(frozen=True)
class Readiness:
    state: State
    message: str
    reports: tuple[TierStatus, ...] = ()
    """The reports of the nodes that must serve it: LB nodes, then Envoys, by name."""


def readiness(
    needed: int,
    *,
    group_name: str,
    group: NodeGroup | None,
    l7: bool,
    lb_reports: Mapping[str, TierStatus],
    envoys: Sequence[TierStatus],
) -> Readiness:
    """Whether revision `needed` of a listener (`l7`: HTTP, HTTPS or GRPC) is live on every
    node that must serve it. `lb_reports`: the l4 board, by node; `envoys`: the reports of
    the group's Envoys."""
    declared = {n.name for n in group.nodes} if group is not None else set()
    reporting = {s.node for s in lb_reports.values() if s.group == group_name}
    lb_nodes = sorted(declared | reporting)
    if not lb_nodes and not l7:
        if group is None:
            return Readiness("pending", f"node group {group_name!r} does not exist")
        return Readiness("pending", f"node group {group_name!r} has no LB nodes for IPVS")
    serving_envoys = sorted(envoys, key=lambda s: s.node) if l7 else []
    nodes = [(f"LB node {n}", lb_reports.get(n)) for n in lb_nodes]
    nodes += [(f"Envoy {s.node}", s) for s in serving_envoys]
    reports = [status for _, status in nodes if status is not None]
    found = [c for who, status in nodes if (c := _check(who, status, needed)) is not None]
    waiting = [why for kind, why in found if kind == "waiting"]
    errors = [why for kind, why in found if kind == "error"]
    if l7 and not serving_envoys:
        waiting.append(f"no Envoy of group {group_name!r} is connected")
    if errors:
        return Readiness("error", "; ".join(errors), tuple(reports))
    if waiting:
        message = f"waiting for revision {needed}: " + "; ".join(waiting)
        return Readiness("pending", message, tuple(reports))
    parts = [f"{len(lb_nodes)} LB node(s)" if lb_nodes else "",
             f"{len(serving_envoys)} Envoy(s)" if l7 else ""]  # fmt: skip
    served_by = " and ".join(part for part in parts if part)
    return Readiness("served", f"revision {needed} is live on {served_by}", tuple(reports))


def combined(parts: Iterable[Readiness]) -> Readiness:
    """One answer for several listeners (a Service's ports): the worst state, with every
    distinct message of that state."""
    chosen = list(parts)
    worst: State = max((p.state for p in chosen), key=SEVERITY.__getitem__, default="pending")
    messages = list(dict.fromkeys(p.message for p in chosen if p.state == worst))
    if worst == "served":  # the listener served by the most nodes says it best
        messages = [max(chosen, key=lambda p: len(p.reports)).message]
    return Readiness(worst, "; ".join(messages))


def _check(who: str, status: TierStatus | None, needed: int) -> tuple[str, str] | None:
    """None if `status` serves revision `needed`, else ("waiting" or "error", why).

    An error counts if it is for a revision at or past `needed` that the node does not serve
    past (a NACK of a later revision leaves this one served). A node that keeps its last
    good state (`slb.integrity`: "holding: ...") serves what it served, and says why it
    serves nothing newer."""
    if status is None:
        return "waiting", f"{who} has not reported"
    failed_at = status.error_revision if status.error else None
    behind = status.revision < needed
    if failed_at is not None and failed_at >= needed and (behind or failed_at <= status.revision):
        return "error", f"{who} rejected revision {failed_at}: {status.error}"
    if not behind:
        return None
    if status.error and status.error.startswith(HOLDING):
        return "waiting", f"{who} keeps its last good state ({status.error[len(HOLDING) :]})"
    return "waiting", f"{who} serves revision {status.revision}"
