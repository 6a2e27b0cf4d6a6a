"""Step: instances whose VIP has left its release grace go away with it.

A Service that stops being exposed keeps its instance (and so its VIP) for the grace
period, in case it comes back. When IPAM frees the address, the instance is deleted,
unless its Service serves listeners on it again by then.
"""

from __future__ import annotations

from collections.abc import Iterable

from cmi.mirror import Mirror, service_owner
from slb.model import Listener, LoadBalancer
from slb.snapshot import Delete


def expired(freed: Iterable[str], mirror: Mirror) -> list[Delete]:
    """The deletes for the Service-owned instances among `freed` that serve nothing."""
    deletes = []
    for instance in freed:
        balancer = mirror.objects.get((LoadBalancer.kind, instance))
        owner = service_owner(balancer) if balancer is not None else None
        if owner is not None and not any(
            kind == Listener.kind for kind, _ in mirror.owned.get(owner, ())
        ):
            deletes.append(Delete(LoadBalancer.kind, instance))
    return deletes
