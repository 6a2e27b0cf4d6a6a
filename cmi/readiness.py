"""Pure: is a Service's load balancer programmed? From what the data planes report.

Each LB node's l4 agent and each Envoy (through the xDS server) report the revision they
serve and their last error (`slb.storage.status`). A Service is programmed once every LB node of
its node group, and for layer-7 listeners every Envoy of the group, serves a revision at
least as new as the one that last changed the Service's objects. An error reported for
such a revision (a netlink failure, an Envoy NACK) makes it an error, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cmi.mirror import Mirror
from slb.model import Listener, LoadBalancer, NodeGroup, Service
from slb.storage.status import TierStatus

State = Literal["programmed", "pending", "error"]


@dataclass(frozen=True)
class Readiness:
    state: State
    message: str


def readiness(
    changed_at: int,
    *,
    group_name: str,
    group: NodeGroup | None,
    needs_l7: bool,
    l4: Mapping[str, TierStatus],
    l7: Mapping[str, TierStatus],
) -> Readiness:
    """Whether revision `changed_at` is live on every node of the group that must serve it.

    A group without LB nodes is an Envoy-only group (its Envoys are reached directly, e.g.
    behind an external L4 or anycast): it can serve layer-7 listeners, not layer-4 ones.
    """
    if group is None and not needs_l7:
        return Readiness("pending", f"node group {group_name!r} does not exist")
    if (group is None or not group.nodes) and not needs_l7:
        return Readiness("pending", f"node group {group_name!r} has no LB nodes for IPVS")
    waiting: list[str] = []
    errors: list[str] = []
    for node in group.nodes if group is not None else ():
        _check(f"LB node {node.name}", l4.get(node.name), changed_at, waiting, errors)
    envoys = sorted((s for s in l7.values() if s.group == group_name), key=lambda s: s.node)
    if needs_l7:
        if not envoys:
            waiting.append(f"no Envoy of group {group_name!r} is connected")
        for status in envoys:
            _check(f"Envoy {status.node}", status, changed_at, waiting, errors)
    if errors:
        return Readiness("error", "; ".join(errors))
    if waiting:
        return Readiness("pending", f"waiting for revision {changed_at}: " + "; ".join(waiting))
    nodes = len(group.nodes) if group is not None else 0
    parts = [f"{nodes} LB node(s)" if nodes else "", f"{len(envoys)} Envoy(s)" if needs_l7 else ""]
    served_by = " and ".join(part for part in parts if part)
    return Readiness("programmed", f"revision {changed_at} is live on {served_by}")


def of_services(
    mirror: Mirror, *, l4: Mapping[str, TierStatus], l7: Mapping[str, TierStatus]
) -> dict[str, Readiness]:
    """Each exposed Service's readiness, from the revision that last changed its objects
    (listeners, Service, instance); Services with no listener or no instance are left out."""
    groups = mirror.of(NodeGroup)
    ready: dict[str, Readiness] = {}
    for key, service in mirror.of(Service).items():
        owned = mirror.owned.get(key, set())
        listeners = [obj for ref in owned if isinstance(obj := mirror.objects[ref], Listener)]
        instance = (LoadBalancer.kind, service.load_balancer)
        balancer = mirror.objects.get(instance)
        if not listeners or not isinstance(balancer, LoadBalancer):
            continue
        ready[key] = readiness(
            max(mirror.revisions.get(ref, 0) for ref in owned | {instance}),
            group_name=balancer.node_group,
            group=groups.get(balancer.node_group),
            needs_l7=any(li.protocol.is_l7 for li in listeners),
            l4=l4,
            l7=l7,
        )
    return ready


def _check(
    who: str, status: TierStatus | None, changed_at: int, waiting: list[str], errors: list[str]
) -> None:
    if status is None:
        waiting.append(f"{who} has not reported")
    elif status.error and (status.error_revision or 0) >= changed_at:
        errors.append(f"{who} rejected revision {status.error_revision}: {status.error}")
    elif status.revision < changed_at:
        waiting.append(f"{who} serves revision {status.revision}")
