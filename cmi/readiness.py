"""Is a Service's (or a Gateway's) load balancer programmed? Each of its listeners by the
one rule (`slb.readiness`), from what the data planes report; it is as ready as its least
ready port."""

from __future__ import annotations

from collections.abc import Mapping

from cmi.gateway import is_gateway_key
from cmi.mirror import Mirror
from slb.model import Listener, LoadBalancer, NodeGroup, Service
from slb.readiness import Readiness, combined, readiness
from slb.storage.status import StatusBoard, TierStatus


def of_services(
    mirror: Mirror, *, l4: Mapping[str, TierStatus], l7: Mapping[str, TierStatus]
) -> dict[str, Readiness]:
    """Each exposed Service's and Gateway's readiness (by its key), from the revision that
    last changed its objects (listeners, Service, instance); those with no listener or no
    instance are left out."""
    groups = mirror.of(NodeGroup)
    envoys: dict[str, list[TierStatus]] = {}
    for status in l7.values():
        envoys.setdefault(status.group, []).append(status)
    instances = {key: service.load_balancer for key, service in mirror.of(Service).items()}
    for key, owned in mirror.owned.items():
        if not is_gateway_key(key):
            continue
        made = sorted(name for kind, name in owned if kind == LoadBalancer.kind)
        if made:  # a Gateway owns its instance
            instances[key] = made[0]
    ready: dict[str, Readiness] = {}
    for key, name in instances.items():
        owned = mirror.owned.get(key, set())
        listeners = [obj for ref in owned if isinstance(obj := mirror.objects[ref], Listener)]
        instance = (LoadBalancer.kind, name)
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


def held(
    mirror: Mirror, *, alarms: Mapping[str, str], l4: Mapping[str, TierStatus]
) -> dict[str, str]:
    """Each exposed Service a data plane keeps its last good state for (`slb.integrity`),
    and why: the xDS server's alarm concerns every Service with an L7 port, an LB node's
    (`l4 NODE`) those of its node group (the groups listing it, or the one it reports)."""
    if not alarms:  # the usual case: nothing to walk every Service for
        return {}
    members = [(g.name, n.name) for g in mirror.of(NodeGroup).values() for n in g.nodes]
    members += [(status.group, name) for name, status in l4.items() if status.group]
    groups: dict[str, str] = {}  # group -> the first alarm of one of its nodes
    for group, node in members:
        if (alarm := alarms.get(StatusBoard.node_alarm(node))) is not None:
            groups.setdefault(group, f"LB node {node}: {alarm}")
    out: dict[str, str] = {}
    for key, service in mirror.of(Service).items():
        balancer = mirror.objects.get((LoadBalancer.kind, service.load_balancer))
        if not isinstance(balancer, LoadBalancer):
            continue
        owned = mirror.owned.get(key, set())
        l7 = any(isinstance(o := mirror.objects[r], Listener) and o.protocol.is_l7 for r in owned)
        why = [groups.get(balancer.node_group, "")]
        why.append(f"the xDS server: {alarms['xds']}" if l7 and "xds" in alarms else "")
        if text := "; ".join(w for w in why if w):
            out[key] = text
    return out
