"""Is a Service's load balancer programmed? Each of its listeners by the one rule
(`slb.readiness`), from what the data planes report; the Service is as ready as its least
ready port."""

from __future__ import annotations

from collections.abc import Mapping

from cmi.mirror import Mirror
from slb.model import Listener, LoadBalancer, NodeGroup, Service
from slb.readiness import Readiness, combined, readiness
from slb.storage.status import TierStatus


def of_services(
    mirror: Mirror, *, l4: Mapping[str, TierStatus], l7: Mapping[str, TierStatus]
) -> dict[str, Readiness]:
    """Each exposed Service's readiness, from the revision that last changed its objects
    (listeners, Service, instance); Services with no listener or no instance are left out."""
    groups = mirror.of(NodeGroup)
    envoys: dict[str, list[TierStatus]] = {}
    for status in l7.values():
        envoys.setdefault(status.group, []).append(status)
    ready: dict[str, Readiness] = {}
    for key, service in mirror.of(Service).items():
        owned = mirror.owned.get(key, set())
        listeners = [obj for ref in owned if isinstance(obj := mirror.objects[ref], Listener)]
        instance = (LoadBalancer.kind, service.load_balancer)
        balancer = mirror.objects.get(instance)
        if not listeners or not isinstance(balancer, LoadBalancer):
            continue
        needed = max(mirror.revisions.get(ref, 0) for ref in owned | {instance})
        group = balancer.node_group
        ready[key] = combined(
            readiness(
                needed,
                group_name=group,
                group=groups.get(group),
                l7=is_l7,
                lb_reports=l4,
                envoys=envoys.get(group, ()),
            )
            for is_l7 in {li.protocol.is_l7 for li in listeners}
        )
    return ready
