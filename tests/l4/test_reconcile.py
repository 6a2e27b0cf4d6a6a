"""Reconcile: minimal, ordered, idempotent; ownership; drains. Pure, so plain data in and out."""

from __future__ import annotations

from l4.ipvs import (
    AddDest,
    AddService,
    Counters,
    DeleteDest,
    DeleteService,
    Dest,
    KernelState,
    ServiceKey,
    SetDest,
    SetService,
    VirtualService,
    sort_dests,
)
from l4.reconcile import DrainKey, Reconciled, reconcile, update_view

WEB = ServiceKey("TCP", "198.18.0.10", 80)
DNS = ServiceKey("UDP", "198.18.0.10", 53)
HAND = ServiceKey("TCP", "198.18.0.99", 22)


def dest(last: int, weight: int = 1, port: int = 8080) -> Dest:
    return Dest(f"198.18.1.{last}", port, weight, "nat")


def service(key: ServiceKey, *dests: Dest, scheduler: str = "rr") -> VirtualService:
    return VirtualService(key, scheduler, (), 0, sort_dests(dests))


def kernel(*services: VirtualService, **active: int) -> KernelState:
    """A kernel holding `services`; `active` gives active connections by dest address."""
    counters = {}
    for svc in services:
        for d in svc.dests:
            count = active.get(d.address.replace(".", "_"), 0)
            counters[(svc.key, d.key)] = Counters(active=count)
    return KernelState({s.key: s for s in services}, counters)


def run(
    desired: list[VirtualService],
    state: KernelState,
    owned: set[ServiceKey],
    *,
    draining: dict[DrainKey, float] | None = None,
    now: float = 1000.0,
    timeout: float = 60.0,
) -> Reconciled:
    return reconcile(
        {s.key: s for s in desired},
        state,
        owned,
        draining=draining or {},
        now=now,
        drain_timeout=timeout,
    )


def test_an_empty_kernel_gets_each_service_then_its_real_servers_and_they_are_claimed() -> None:
    web = service(WEB, dest(2), dest(1, weight=3))
    dns = service(DNS, dest(1, port=53))
    result = run([web, dns], KernelState.empty(), set())
    assert result.ops == (
        AddService(service(WEB)),
        AddDest(WEB, dest(1, weight=3)),
        AddDest(WEB, dest(2)),
        AddService(service(DNS)),
        AddDest(DNS, dest(1, port=53)),
    )
    assert result.claimed == result.owned == {WEB, DNS}


def test_a_second_run_after_applying_changes_nothing() -> None:
    desired = [service(WEB, dest(1), dest(2)), service(DNS, dest(3, port=53))]
    state = KernelState.empty()
    first = run(desired, state, set())
    update_view(state, first.ops)
    second = run(desired, state, set(first.owned))
    assert second.ops == ()
    assert second.owned == first.owned
    assert state.services == {s.key: s for s in desired}


def test_one_weight_change_is_one_operation() -> None:
    state = kernel(service(WEB, dest(1), dest(2), dest(3)))
    result = run([service(WEB, dest(1), dest(2, weight=5), dest(3))], state, {WEB})
    assert result.ops == (SetDest(WEB, dest(2, weight=5)),)


def test_a_scheduler_change_sets_the_service_in_place() -> None:
    state = kernel(service(WEB, dest(1)))
    result = run([service(WEB, dest(1), scheduler="wlc")], state, {WEB})
    assert result.ops == (SetService(service(WEB, scheduler="wlc")),)


def test_new_real_servers_come_before_changes_and_departures() -> None:
    state = kernel(service(WEB, dest(1), dest(2)))
    result = run([service(WEB, dest(2, weight=2), dest(3))], state, {WEB})
    assert result.ops == (
        AddDest(WEB, dest(3)),
        SetDest(WEB, dest(2, weight=2)),
        DeleteDest(WEB, dest(1)),
    )


def test_a_service_made_by_hand_is_reported_and_never_touched() -> None:
    state = kernel(service(WEB, dest(1)), service(HAND, dest(9, port=22)))
    result = run([service(WEB, dest(1))], state, {WEB})
    assert result.ops == ()
    assert result.foreign == (HAND,)
    assert HAND not in result.owned


def test_a_wanted_key_held_by_someone_else_is_blocked_not_taken() -> None:
    state = kernel(service(WEB, dest(7)))
    result = run([service(WEB, dest(1))], state, set())
    assert result.ops == ()
    assert result.blocked == (WEB,)
    assert result.owned == frozenset()


def test_a_service_no_longer_wanted_is_deleted_and_forgotten() -> None:
    state = kernel(service(WEB, dest(1)), service(DNS, dest(1, port=53)))
    result = run([service(WEB, dest(1))], state, {WEB, DNS})
    assert result.ops == (DeleteService(DNS),)
    assert result.owned == {WEB}


def test_a_service_no_longer_wanted_drains_its_connections_then_goes() -> None:
    """#17 item 6: a removed listener's service keeps serving its established connections
    (its real servers at weight 0: nothing new) until they end or the drain timeout."""
    state = kernel(service(DNS, dest(1, port=53)), service(WEB, dest(1), dest(2)),
                   **{"198_18_1_2": 4})  # fmt: skip
    first = run([service(DNS, dest(1, port=53))], state, {WEB, DNS}, now=1000.0)
    assert first.ops == (DeleteDest(WEB, dest(1)), SetDest(WEB, dest(2, weight=0)))
    assert first.owned == {WEB, DNS}
    assert first.draining == {(WEB, dest(2).key): 1000.0}

    update_view(state, first.ops)
    waiting = run([service(DNS, dest(1, port=53))], state, {WEB, DNS},
                  draining=first.draining, now=1030.0)  # fmt: skip
    assert waiting.ops == ()
    assert waiting.owned == {WEB, DNS}
    state.counters[(WEB, dest(2).key)] = Counters(active=0, inactive=1)
    done = run([service(DNS, dest(1, port=53))], state, {WEB, DNS},
               draining=first.draining, now=1031.0)  # fmt: skip
    assert done.ops == (DeleteService(WEB),)
    assert done.owned == {DNS}
    assert done.draining == {}


def test_a_departing_service_goes_at_the_drain_timeout() -> None:
    state = kernel(service(WEB, dest(1, weight=0)), **{"198_18_1_1": 9})
    drains = {(WEB, dest(1).key): 1000.0}
    assert run([], state, {WEB}, draining=drains, now=1059.0, timeout=60).ops == ()
    assert run([], state, {WEB}, draining=drains, now=1060.0, timeout=60).ops == (
        DeleteService(WEB),)  # fmt: skip


def test_a_record_of_a_service_gone_from_the_kernel_is_dropped() -> None:
    result = run([], KernelState.empty(), {DNS})
    assert result.ops == ()
    assert result.owned == frozenset()


def test_a_weight_left_at_zero_by_a_crash_is_restored() -> None:
    state = kernel(service(WEB, dest(1, weight=0), dest(2, weight=4)))
    result = run([service(WEB, dest(1, weight=2), dest(2, weight=4))], state, {WEB})
    assert result.ops == (SetDest(WEB, dest(1, weight=2)),)


def test_a_departing_server_with_connections_drains_then_goes_when_they_end() -> None:
    state = kernel(service(WEB, dest(1), dest(2)), **{"198_18_1_2": 3})
    wanted = [service(WEB, dest(1))]
    first = run(wanted, state, {WEB}, now=1000.0)
    assert first.ops == (SetDest(WEB, dest(2, weight=0)),)
    assert first.draining == {(WEB, dest(2).key): 1000.0}

    update_view(state, first.ops)
    waiting = run(wanted, state, {WEB}, draining=first.draining, now=1030.0)
    assert waiting.ops == ()
    assert waiting.draining == first.draining

    state.counters[(WEB, dest(2).key)] = Counters(active=0, inactive=2)
    done = run(wanted, state, {WEB}, draining=first.draining, now=1031.0)
    assert done.ops == (DeleteDest(WEB, dest(2, weight=0)),)
    assert done.draining == {}


def test_a_drain_ends_at_the_timeout_even_with_connections() -> None:
    state = kernel(service(WEB, dest(1), dest(2, weight=0)), **{"198_18_1_2": 5})
    drains = {(WEB, dest(2).key): 1000.0}
    before = run([service(WEB, dest(1))], state, {WEB}, draining=drains, now=1059.0, timeout=60)
    assert before.ops == ()
    after = run([service(WEB, dest(1))], state, {WEB}, draining=drains, now=1060.0, timeout=60)
    assert after.ops == (DeleteDest(WEB, dest(2, weight=0)),)


def test_a_server_without_connections_leaves_at_once() -> None:
    state = kernel(service(WEB, dest(1), dest(2)))
    result = run([service(WEB, dest(1))], state, {WEB})
    assert result.ops == (DeleteDest(WEB, dest(2)),)
    assert result.draining == {}


def test_a_server_coming_back_during_its_drain_is_restored() -> None:
    state = kernel(service(WEB, dest(1), dest(2, weight=0)), **{"198_18_1_2": 5})
    drains = {(WEB, dest(2).key): 1000.0}
    result = run(
        [service(WEB, dest(1), dest(2, weight=3))], state, {WEB}, draining=drains, now=1010.0
    )
    assert result.ops == (SetDest(WEB, dest(2, weight=3)),)
    assert result.draining == {}


def test_scope_limits_the_work_and_carries_the_rest_over() -> None:
    state = kernel(service(WEB, dest(1)), service(DNS, dest(1, port=53)))
    drains = {(DNS, dest(4, port=53).key): 5.0}
    result = reconcile(
        {WEB: service(WEB, dest(1), dest(2))},
        state,
        {WEB, DNS},
        draining=drains,
        now=10.0,
        drain_timeout=60.0,
        scope=[WEB],
    )
    assert result.ops == (AddDest(WEB, dest(2)),)
    assert result.owned == {WEB, DNS}
    assert result.draining == drains


def test_update_view_follows_every_kind_of_operation() -> None:
    state = kernel(service(WEB, dest(1), dest(2)), service(DNS, dest(1, port=53)))
    update_view(
        state,
        [
            DeleteService(DNS),
            SetService(service(WEB, scheduler="wlc")),
            AddDest(WEB, dest(3)),
            SetDest(WEB, dest(1, weight=0)),
            DeleteDest(WEB, dest(2)),
        ],
    )
    assert state.services == {WEB: service(WEB, dest(1, weight=0), dest(3), scheduler="wlc")}
    assert set(state.counters) == {(WEB, dest(1).key), (WEB, dest(3).key)}
