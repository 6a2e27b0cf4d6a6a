"""The controller's pure steps, one at a time: plain data in, plain data out.

No Redis and no API server: IPAM is stood in for by `Allocations`, the store by a mirror
filled from built objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmi import grace, vips
from cmi.build import Built, Defaults, Event, Previous, build, refused
from cmi.conflicts import SERVED, PortBook, conflict_events, port_conflicts
from cmi.diff import diff
from cmi.ipam import IPAMError
from cmi.k8s.writer import CONDITION, PROGRAMMED
from cmi.mirror import Mirror
from cmi.quota import within_quotas
from cmi.report import condition_of, exposure, programmed_condition
from slb.config import CmiSettings
from slb.model import (
    AddressPool,
    IPAddress,
    Listener,
    LoadBalancer,
    Owner,
    OwnerKind,
    StoredObject,
)
from slb.readiness import Readiness
from slb.snapshot import Delete, Put

POOLS = {"default": AddressPool.model_validate({"name": "default", "cidrs": ["198.18.0.0/29"]})}
PUBLIC = LoadBalancer(name="public", vip="198.18.0.200", pool="default",
                      owner=Owner(kind=OwnerKind.OPERATOR, name="ops"),
                      allowed_namespaces=("*",))  # fmt: skip


def exposed(
    name: str,
    expose: str = "true",
    ports: list[dict[str, Any]] | None = None,
    now: float = 1000.0,
    created: str = "2026-01-02T03:04:05Z",
    previous: Previous | None = None,
) -> Built:
    """The build step's result for a labelled Service in namespace 'shop', built at `now`."""
    body = {
        "metadata": {"namespace": "shop", "name": name, "creationTimestamp": created,
                     "labels": {"openslb.io/expose": expose}},
        "spec": {"ports": ports or [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]},
    }  # fmt: skip
    return build(body, slices=[], nodes={}, defaults=Defaults(), previous=previous or Previous(),
                 instances={"public": PUBLIC}, now=now)  # fmt: skip


def mirror_of(objects: Iterable[StoredObject], revision: int = 1) -> Mirror:
    mirror = Mirror()
    for obj in objects:
        mirror.put(obj, revision)
    return mirror


def served_instance(built: Built, vip: str = "198.18.0.1") -> LoadBalancer:
    """The Service's own instance as stored, with its VIP."""
    assert built.dedicated is not None
    return built.dedicated.model_copy(update={"vip": ipaddress.ip_address(vip)})


def objects_of(built: Built) -> list[StoredObject]:
    """What the store holds once the Service is served (its own instance with a VIP)."""
    assert built.service is not None
    balancers = [served_instance(built)] if built.dedicated else []
    return [*built.listeners, built.service, *balancers]


class Allocations:
    """IPAM in memory: each instance keeps the address it got; `refuse` makes every
    allocation fail with that reason."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.held: dict[str, IPAddress] = {}
        self.released: list[str] = []
        self.asked: list[tuple[str, list[str], IPAddress | None]] = []

    def allocate(
        self, instance: str, pools: Iterable[AddressPool], requested: IPAddress | None = None
    ) -> IPAddress:
        pools = list(pools)
        self.asked.append((instance, [p.name for p in pools], requested))
        if self.refuse is not None:
            raise IPAMError(self.refuse)
        holder = next((i for i, a in self.held.items() if a == requested), instance)
        if holder != instance:
            raise IPAMError(f"{requested} is already the VIP of instance {holder!r}")
        if requested is None and instance not in self.held:
            free = (a for p in pools for net in p.cidrs for a in net.hosts()
                    if a not in self.held.values())  # fmt: skip
            requested = next(free)
        self.held[instance] = requested or self.held[instance]
        return self.held[instance]

    def release(self, instance: str) -> IPAddress | None:
        self.released.append(instance)
        return self.held.get(instance)

    def current(self, instance: str) -> IPAddress | None:
        return self.held.get(instance)


# -- VIPs --------------------------------------------------------------------------------


def test_a_services_instance_gets_its_vip_before_it_is_written() -> None:
    built = exposed("cart")
    served, objects = vips.desired(built, Previous(), Allocations(), POOLS)
    assert served.dedicated is not None
    assert served.dedicated.vip == ipaddress.ip_address("198.18.0.1")
    assert objects == objects_of(built)


def test_a_vip_that_cannot_be_had_keeps_what_was_served() -> None:
    built = exposed("cart")
    previous = Previous(service=built.service, listeners={li.name: li for li in built.listeners},
                        load_balancer=served_instance(built))  # fmt: skip
    why = "198.18.9.9 is outside every address pool"
    refusal = Allocations(refuse=why)
    served, objects = vips.desired(built, previous, refusal, POOLS)
    assert objects == [built.service, *built.listeners, served_instance(built)]
    assert served.exposed
    assert served.events[-1] == Event("Warning", "VIPUnavailable", why)
    never_served, nothing = vips.desired(built, Previous(), refusal, POOLS)
    assert (never_served.exposed, nothing) == (False, [])


def test_a_refused_service_stays_refused_through_the_vip_step() -> None:
    """A Service refused (bad annotations, a name taken) keeps its served instance and VIP,
    and is still reported refused: the VIP step must not turn it into a served one."""
    built = exposed("cart")
    previous = Previous(service=built.service, listeners={li.name: li for li in built.listeners},
                        load_balancer=served_instance(built))  # fmt: skip
    kept = refused("shop/cart", previous, "the name(s) Listener x are taken", "NameTaken")
    instance = served_instance(built)
    assert instance.vip is not None
    held = Allocations()
    held.held[instance.name] = instance.vip
    served, objects = vips.desired(kept, previous, held, POOLS)
    assert (served.refused, served.refused_reason) == (kept.refused, "NameTaken")
    assert served.dedicated == served_instance(built)
    assert objects == [*built.listeners, built.service, served_instance(built)]
    vip = served_instance(built).vip
    status, reason, _ = exposure(served, vip, {}, None).conditions[CONDITION]  # type: ignore[misc]
    assert (status, reason) == ("False", "NameTaken")


def test_a_service_takes_back_the_vip_its_status_names_if_it_is_free() -> None:
    remembered = ipaddress.ip_address("198.18.0.7")
    built = replace(exposed("cart"), remembered_vip=remembered)
    assert built.dedicated is not None
    served, _ = vips.desired(built, Previous(), Allocations(), POOLS)
    assert served.dedicated is not None
    assert served.dedicated.vip == remembered
    taken = Allocations()
    taken.held["other"] = remembered  # drawn by another meanwhile: a VIP as any new Service
    served, _ = vips.desired(built, Previous(), taken, POOLS)
    assert served.dedicated is not None
    assert served.dedicated.vip == ipaddress.ip_address("198.18.0.1")
    assert served.events == built.events  # no VIPUnavailable: the status is only a hint
    holding = Allocations()
    holding.held[built.dedicated.name] = ipaddress.ip_address("198.18.0.3")
    served, _ = vips.desired(built, Previous(), holding, POOLS)  # IPAM's record wins
    assert served.dedicated is not None
    assert served.dedicated.vip == ipaddress.ip_address("198.18.0.3")


def test_a_withdrawn_service_holds_its_instance_for_the_grace() -> None:
    balancer = served_instance(exposed("cart"))
    allocations = Allocations()
    withdrawn = Built("shop/cart", exposed=False)
    assert vips.desired(withdrawn, Previous(load_balancer=balancer), allocations, POOLS) == (
        withdrawn, [balancer]
    )  # fmt: skip
    assert allocations.released == [balancer.name]


def test_a_shared_instance_needs_no_vip_of_the_services() -> None:
    built = exposed("cart", expose="public")
    allocations = Allocations()
    _, objects = vips.desired(built, Previous(), allocations, POOLS)
    assert objects == [*built.listeners, built.service]
    assert allocations.asked == []


def test_pools_a_vip_may_come_from() -> None:
    other = AddressPool.model_validate({"name": "other", "cidrs": ["198.19.0.0/24"]})
    pools = {**POOLS, "other": other}
    assert vips.pools_for(PUBLIC, pools) == [POOLS["default"], other]  # a fixed VIP: any pool
    from_other = PUBLIC.model_copy(update={"vip": None, "pool": "other"})
    assert vips.pools_for(from_other, pools) == [other]
    with pytest.raises(IPAMError, match="address pool 'other' does not exist"):
        vips.pools_for(from_other, POOLS)


def test_operators_instances_get_or_claim_their_vips() -> None:
    pooled = PUBLIC.model_copy(update={"name": "pooled", "vip": None})
    stray = PUBLIC.model_copy(update={"name": "stray", "vip": None, "pool": "nosuch"})
    services = served_instance(exposed("cart"))
    allocations = Allocations()
    balancers = {b.name: b for b in (PUBLIC, pooled, stray, services)}
    got = vips.operator_vips(balancers, allocations, POOLS)
    assert got == {"pooled": ipaddress.ip_address("198.18.0.1")}  # only the one without a VIP
    assert allocations.held["public"] == PUBLIC.vip  # the fixed VIP is claimed all the same
    assert [name for name, _, _ in allocations.asked] == ["public", "pooled"]


def test_the_pool_from_cmis_settings() -> None:
    pool = vips.default_pool(CmiSettings(pool="edge", pool_cidrs="198.18.0.0/24, 2001:db8::/64,"))
    assert pool is not None
    assert (pool.name, [str(c) for c in pool.cidrs]) == ("edge", ["198.18.0.0/24", "2001:db8::/64"])
    assert vips.default_pool(CmiSettings()) is None


# -- quotas ------------------------------------------------------------------------------

PORTS = [{"name": f"p{i}", "port": 8000 + i} for i in range(3)]


def served(built: Built) -> Previous:
    return Previous(service=built.service, listeners={li.name: li for li in built.listeners},
                    load_balancer=served_instance(built) if built.dedicated else None)  # fmt: skip


def test_a_service_that_would_pass_the_listener_quota_is_refused_and_keeps_its_own() -> None:
    """`cmi.listeners_per_namespace` (#14): the namespace's Services own 3 of 3 listeners; a
    new 3-port Service is refused naming the setting, one port more on a served one is
    refused and it keeps its 3, and what another Service of the batch gives back makes room."""
    one = exposed("one", "public", ports=PORTS)
    store = mirror_of(objects_of(one))
    grown = exposed("one", "public", ports=[*PORTS, {"name": "p9", "port": 8009}])
    new = exposed("new", "public", ports=PORTS)
    out = within_quotas([("shop/one", served(one), grown), ("shop/new", Previous(), new)],
                        store, instances_limit=0, listeners_limit=3)  # fmt: skip
    (_, _, kept), (_, _, refused) = out
    assert kept.refused is not None
    assert "(cmi.listeners_per_namespace)" in kept.refused
    assert kept.listeners == one.listeners  # its 3 ports keep serving
    assert not refused.exposed
    assert [e.reason for e in refused.events] == ["Refused"]
    assert "past 3 listeners (cmi.listeners_per_namespace)" in refused.events[0].message
    gone = Built("shop/one", exposed=False)  # unlabelled: gives its 3 back in the same batch
    out = within_quotas([("shop/new", Previous(), new), ("shop/one", served(one), gone)],
                        store, instances_limit=0, listeners_limit=3)  # fmt: skip
    assert [b.refused for _, _, b in out] == [None, None]
    assert within_quotas([("shop/new", Previous(), new)], store, instances_limit=0,
                         listeners_limit=0)[0][2] is new  # fmt: skip


def test_instances_operators_made_for_a_namespace_count_against_its_quota() -> None:
    """One quota of VIPs per namespace: an operator's instance made for `shop` takes one."""
    for_shop = PUBLIC.model_copy(update={"name": "for-shop", "namespace": "shop"})
    cart = exposed("cart")
    out = within_quotas([("shop/cart", Previous(), cart)], mirror_of([for_shop]),
                        instances_limit=1, listeners_limit=0)  # fmt: skip
    assert out[0][2].refused is not None
    assert "owns 1 instances already (cmi.instances_per_namespace)" in out[0][2].refused
    out = within_quotas([("shop/cart", Previous(), cart)], mirror_of([PUBLIC]),
                        instances_limit=1, listeners_limit=0)  # fmt: skip
    assert out[0][2] is cart


# -- grace -------------------------------------------------------------------------------


def test_an_instance_whose_vip_is_freed_goes_unless_its_service_serves_again() -> None:
    withdrawn, back = served_instance(exposed("cart")), exposed("shop")
    mirror = mirror_of([withdrawn, *objects_of(back), PUBLIC])
    freed = [withdrawn.name, served_instance(back).name, "public", "unknown"]
    assert grace.expired(freed, mirror) == [Delete("LoadBalancer", withdrawn.name)]


# -- diff --------------------------------------------------------------------------------


def test_only_what_differs_is_written_and_what_is_no_longer_wanted_deleted() -> None:
    built = exposed("cart")
    stored = objects_of(built)
    mirror = mirror_of(stored)
    owned = mirror.owned["shop/cart"]
    assert diff(stored, mirror.objects, owned) == []
    assert diff(stored, {}, set()) == [Put(o) for o in stored]
    two_ports = exposed("cart", ports=[{"name": "grpc", "port": 50051, "appProtocol": "grpc"},
                                       {"name": "db", "port": 5432}])  # fmt: skip
    (added,) = [li for li in two_ports.listeners if li.port == 5432]
    assert two_ports.service is not None  # it has a port more too
    assert diff(objects_of(two_ports), mirror.objects, owned) == [
        Put(added), Put(two_ports.service)
    ]  # fmt: skip
    moved = built.listeners[0].model_copy(update={"port": 50052})
    put, *deletes = diff([moved], mirror.objects, owned)
    assert put == Put(moved)
    assert set(deletes) == {Delete("Service", "shop/cart"),
                            Delete("LoadBalancer", served_instance(built).name)}  # fmt: skip


# -- conflicts ---------------------------------------------------------------------------


def test_the_newer_listener_on_a_taken_port_is_not_served_and_its_service_told() -> None:
    first = exposed("first", expose="public", now=1000.0)
    second = exposed("second", expose="public", now=1001.0)
    waiting = exposed("waiting")
    listeners = {li.name: li for b in (first, second, waiting) for li in b.listeners}
    assert waiting.dedicated is not None  # its instance has no VIP yet
    balancers = {"public": PUBLIC, waiting.dedicated.name: waiting.dedicated}
    conflicts = port_conflicts(balancers, listeners)
    (won,), (lost,), (pending,) = first.listeners, second.listeners, waiting.listeners
    why = "198.18.0.200:50051/TCP is already taken (by its instance's owner, or an earlier claim)"
    assert conflicts.listener_status[won.name] == SERVED
    assert conflicts.listener_status[lost.name] == why
    assert "waits for a VIP" in conflicts.listener_status[pending.name]
    assert conflicts.by_service == {"shop/second": {lost.name: why}}  # waiting is no conflict
    assert conflict_events({lost.name: why}) == [
        Event("Warning", "ListenerConflict", f"listener {lost.name}: {why}")
    ]


def test_the_instances_owner_and_the_first_claim_win_not_creation_timestamps() -> None:
    """An old Service relabelled onto an instance used to win its ports by its
    creationTimestamp; the instance's owner's listener, then the earlier claim, win (#14)."""
    operators = Listener.model_validate({
        "name": "ops-web", "load_balancer": "public", "protocol": "GRPC", "port": 50051,
        "selector": {"match_labels": {"app": "web"}}, "target_port": 8080,
        "owner": {"kind": "Operator", "name": "ops"}, "created_at": 5000.0,
    })  # fmt: skip
    ancient = exposed("ancient", expose="public", now=10.0, created="2001-01-01T00:00:00Z")
    conflicts = port_conflicts(
        {"public": PUBLIC}, {operators.name: operators, **{li.name: li for li in ancient.listeners}}
    )
    (lost,) = ancient.listeners
    assert conflicts.listener_status[operators.name] == SERVED
    assert conflicts.listener_status[lost.name] != SERVED
    # Its claim dates from when it entered the instance, whatever the Service's age.
    (served,) = exposed("later", expose="public", now=2000.0).listeners
    moved = exposed("later", expose="public", now=3000.0,
                    previous=Previous(listeners={served.name: served}))  # fmt: skip
    assert moved.listeners[0].created_at == 2000.0  # kept while on the same instance
    elsewhere = served.model_copy(update={"load_balancer": "other"})
    relabelled = exposed("later", expose="public", now=3000.0,
                         previous=Previous(listeners={served.name: elsewhere}))  # fmt: skip
    assert relabelled.listeners[0].created_at == 3000.0  # a new claim on this instance


# -- what a Service is told --------------------------------------------------------------


def test_an_exposed_service_is_told_where_and_what_is_not_served() -> None:
    built = exposed("cart", ports=[{"name": "grpc", "port": 50051, "appProtocol": "grpc"},
                                   {"name": "db", "port": 5432}])  # fmt: skip
    vip = ipaddress.ip_address("198.18.0.1")
    instance = built.instance
    waiting = exposure(built, None, {}, None)
    assert (waiting.ingress, waiting.message) == ([], None)
    assert waiting.conditions == {
        CONDITION: ("False", "WaitingForVIP", f"instance {instance} waits for a VIP"),
        PROGRAMMED: None,
    }
    served = exposure(built, vip, {}, None)
    message = f"exposed at 198.18.0.1:50051/GRPC, 198.18.0.1:5432/TCP (instance {instance})"
    assert served.conditions == {CONDITION: ("True", "Exposed", message)}
    assert served.ingress == [{"ip": "198.18.0.1", "ipMode": "VIP", "ports": [
        {"port": 50051, "protocol": "TCP"}, {"port": 5432, "protocol": "TCP"}]}]  # fmt: skip
    grpc = next(li.name for li in built.listeners if li.port == 50051)
    ready = Readiness("pending", "waiting for revision 3")
    conflicted = exposure(built, vip, {grpc: "taken"}, ready)
    assert conflicted.conditions == {
        CONDITION: ("False", "ListenerConflict",
                    f"exposed at 198.18.0.1:5432/TCP (instance {instance}); "
                    f"not served: {grpc}: taken"),
        PROGRAMMED: ("False", "Pending", "waiting for revision 3"),
    }  # fmt: skip
    assert conflicted.ingress[0]["ports"] == [{"port": 5432, "protocol": "TCP"}]


def test_conditions_as_written_and_as_read() -> None:
    assert programmed_condition(Readiness("served", "live")) == ("True", "Programmed", "live")
    assert programmed_condition(Readiness("error", "NACK")) == ("False", "Error", "NACK")
    exposed_at = {"type": CONDITION, "status": "True", "reason": "Exposed", "message": "at x"}
    body = {"status": {"conditions": [exposed_at]}}
    assert condition_of(body, CONDITION) == ("True", "Exposed", "at x")
    assert condition_of(body, PROGRAMMED) is None
    assert condition_of({}, CONDITION) is None


_VIPS = (None, "198.18.0.200", "198.18.0.201")
_LISTENER = exposed("base").listeners[0]
_CHANGES = st.lists(
    st.one_of(
        st.tuples(
            st.just("listener"),
            st.integers(0, 7),
            st.integers(0, 3),
            st.sampled_from([50051, 50052]),
            st.booleans(),
        ),
        st.tuples(st.just("instance"), st.integers(0, 3), st.sampled_from(_VIPS), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_CHANGES)
def test_judging_only_the_touched_places_gives_what_judging_all_gives(
    changes: list[tuple[Any, ...]],
) -> None:
    """PortBook, fed the mirror's touched objects turn by turn, against `port_conflicts`
    over everything: listeners moving between instances and ports, instances getting,
    changing, losing and sharing VIPs, both coming and going."""
    mirror, book = Mirror(), PortBook()
    book.judge({}, {}, mirror.take_touched())
    for turn, change in enumerate(changes, start=1):
        if change[0] == "listener":
            _, index, instance, port, present = change
            name = f"l{index}"
            if present:
                owner = Owner(kind=OwnerKind.SERVICE, name=f"shop/s{index}")
                mirror.put(_LISTENER.model_copy(update={
                    "name": name, "load_balancer": f"i{instance}", "port": port,
                    "owner": owner, "created_at": float(turn),
                }), turn)  # fmt: skip
            else:
                mirror.delete((Listener.kind, name))
        else:
            _, instance, vip, present = change
            if present:
                mirror.put(LoadBalancer.model_validate({
                    "name": f"i{instance}", "vip": vip, "pool": "default",
                    "owner": {"kind": "Operator", "name": "ops"},
                }), turn)  # fmt: skip
            else:
                mirror.delete((LoadBalancer.kind, f"i{instance}"))
        balancers, listeners = mirror.of(LoadBalancer), mirror.of(Listener)
        assert book.judge(balancers, listeners, mirror.take_touched()) == port_conflicts(
            balancers, listeners
        )
