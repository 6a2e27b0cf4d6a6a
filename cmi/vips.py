"""Step: every instance gets its VIP from IPAM before anything that names it is written.

A Service's own instance asks for an address from its pool (or claims the one its
annotation names); an operator's instance without a VIP gets one the same way, and one
with a fixed VIP claims it, so IPAM never hands that address to anyone else. A VIP that
cannot be had leaves the Service as it was served (nothing half-applied) and says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from cmi.build import VIP_UNAVAILABLE, Built, Event, Previous
from cmi.ipam import IPAMError
from slb.config import CmiSettings, comma_list
from slb.model import AddressPool, IPAddress, LoadBalancer, OwnerKind, StoredObject

log = logging.getLogger(__name__)


class Allocator(Protocol):
    """What this step needs of IPAM (`cmi.ipam.IPAM`)."""

    def allocate(
        self, instance: str, pools: Iterable[AddressPool], requested: IPAddress | None = None
    ) -> IPAddress: ...

    def release(self, instance: str) -> IPAddress | None: ...

    def current(self, instance: str) -> IPAddress | None: ...


def default_pool(settings: CmiSettings) -> AddressPool | None:
    """The pool that cmi's settings define (`pool_cidrs`), if they define one."""
    if not settings.pool_cidrs:
        return None
    return AddressPool.model_validate(
        {"name": settings.pool, "cidrs": comma_list(settings.pool_cidrs)}
    )


def pools_for(balancer: LoadBalancer, pools: Mapping[str, AddressPool]) -> list[AddressPool]:
    """Where the instance's VIP may come from: its pool, or any pool for a requested VIP."""
    if balancer.vip is not None:
        return list(pools.values())
    if balancer.pool is None or balancer.pool not in pools:
        raise IPAMError(f"address pool {balancer.pool!r} does not exist")
    return [pools[balancer.pool]]


def desired(
    built: Built, previous: Previous, ipam: Allocator, pools: Mapping[str, AddressPool]
) -> tuple[Built, list[StoredObject]]:
    """The objects a Service should own now, its instance's VIP allocated.

    A Service no longer exposed keeps its instance while the VIP's grace runs (`cmi.grace`).
    """
    if not built.exposed:
        kept: list[StoredObject] = []
        if previous.load_balancer is not None:
            ipam.release(previous.load_balancer.name)
            kept.append(previous.load_balancer)
        return built, kept
    balancer = built.dedicated
    if balancer is not None:
        drawn_from = pools if balancer.vip is not None else of_family(pools, built.ip_family)
        try:
            vip = _remembered(built, balancer, ipam, pools) or ipam.allocate(
                balancer.name, pools_for(balancer, drawn_from), balancer.vip
            )
        except IPAMError as exc:
            event = Event("Warning", VIP_UNAVAILABLE, str(exc))
            built = Built(built.key, exposed=previous.service is not None,
                          instance=built.instance, events=(*built.events, event))  # fmt: skip
            return built, previous.objects
        balancer = balancer.model_copy(update={"vip": vip})
        built = _with_vip(built, balancer)
    objects: list[StoredObject] = [*built.listeners, *(p.certificate for p in built.certificates)]
    if built.service is not None:
        objects.append(built.service)
    if balancer is not None:
        objects.append(balancer)
    return built, objects


FAMILY_NOT_OFFERED = "IPFamilyNotOffered"


def of_family(pools: Mapping[str, AddressPool], family: int | None) -> dict[str, AddressPool]:
    """The pools with only their CIDRs of this IP family, each that has any: a Service's VIP
    is of its primary family where its pool can give one (a pool with none keeps its
    CIDRs, and the Service is told)."""
    narrowed = {}
    for name, pool in pools.items():
        cidrs = tuple(c for c in pool.cidrs if c.version == family)
        keep = family is None or not cidrs or len(cidrs) == len(pool.cidrs)
        narrowed[name] = pool if keep else pool.model_copy(update={"cidrs": cidrs})
    return narrowed


def _with_vip(built: Built, balancer: LoadBalancer) -> Built:
    """The Service served on its instance's VIP; told if the VIP is not of its family."""
    events, caveats = built.events, built.caveats
    vip = balancer.vip
    if vip is not None and built.ip_family is not None and vip.version != built.ip_family:
        why = (
            f"the Service's primary IP family is IPv{built.ip_family}, but VIP {vip} is not "
            f"(pool {balancer.pool!r} has no such CIDR, or that VIP was asked for)"
        )
        events += (Event("Warning", FAMILY_NOT_OFFERED, why),)
        caveats += (f"{FAMILY_NOT_OFFERED}: {why}",)
    return replace(built, dedicated=balancer, events=events, caveats=caveats)


def _remembered(
    built: Built, balancer: LoadBalancer, ipam: Allocator, pools: Mapping[str, AddressPool]
) -> IPAddress | None:
    """The VIP the Service had (`Built.remembered_vip`), taken back if IPAM has none for the
    instance and the address is free in its pool; None otherwise (it gets one as any new
    Service)."""
    if built.remembered_vip is None or ipam.current(balancer.name) is not None:
        return None
    try:
        vip = ipam.allocate(balancer.name, pools_for(balancer, pools), built.remembered_vip)
    except IPAMError as exc:
        log.info("%s does not get its former VIP back: %s", built.key, exc)
        return None
    log.info("%s takes back its VIP %s", built.key, vip)
    return vip


def operator_vips(
    balancers: Mapping[str, LoadBalancer], ipam: Allocator, pools: Mapping[str, AddressPool]
) -> dict[str, IPAddress]:
    """Claim every operator's instance's VIP; return those allocated to instances that
    have none yet (the caller writes them)."""
    allocated: dict[str, IPAddress] = {}
    for name, balancer in balancers.items():
        if balancer.owner.kind is not OwnerKind.OPERATOR:
            continue
        try:
            vip = ipam.allocate(name, pools_for(balancer, pools), balancer.vip)
        except IPAMError as exc:
            if balancer.vip is None:
                log.warning("instance %s gets no VIP: %s", name, exc)
            continue
        if balancer.vip is None:
            allocated[name] = vip
    return allocated
