"""Both drivers against the real kernel: round trips, idempotence, minimal diffs, ownership."""

from __future__ import annotations

import subprocess

import pytest

from l4.drivers import Driver
from l4.ipvs import (
    AddDest,
    Dest,
    KernelState,
    ServiceKey,
    SetDest,
    SetService,
    VirtualService,
    sort_dests,
)
from l4.reconcile import Reconciled, reconcile
from tests.l4.conftest import SCHEDULERS

pytestmark = pytest.mark.lab

WEB = ServiceKey("TCP", "198.18.0.10", 80)
DNS = ServiceKey("UDP", "198.18.0.10", 53)
WEB6 = ServiceKey("TCP", "2001:2::10", 443)
EDGE = ServiceKey("TCP", "198.18.0.11", 8443)
HAND = ServiceKey("TCP", "198.18.0.99", 22)


def dest(address: str, port: int = 8080, weight: int = 1, forwarding: str = "nat") -> Dest:
    return Dest(address, port, weight, forwarding)  # type: ignore[arg-type]


PLAN = {
    WEB: VirtualService(WEB, "rr", (), 0, sort_dests(
        [dest("198.18.1.1"), dest("198.18.1.2", weight=2)._replace(upper=500),
         dest("198.18.1.10", weight=0)])),
    DNS: VirtualService(DNS, "sh", ("sh-fallback", "sh-port"), 300, sort_dests(
        [dest("198.18.2.1", 53, forwarding="dr"), dest("198.18.2.2", 53, 3, "dr")])),
    WEB6: VirtualService(WEB6, "wlc", (), 0, sort_dests(
        [dest("2001:2::1:1", 443, forwarding="tun"), dest("2001:2::1:2", 8443)])),
    EDGE: VirtualService(EDGE, "mh", ("mh-fallback", "mh-port"), 0, sort_dests(
        [dest("198.18.100.1", 8443, forwarding="dr"), dest("198.18.100.2", 8443, 65535, "dr")])),
}  # fmt: skip


def converge(
    driver: Driver, desired: dict[ServiceKey, VirtualService], owned: set[ServiceKey]
) -> tuple[Reconciled, int]:
    """Dump, reconcile, apply; return the result and how many changes the driver made."""
    before = driver.operations
    result = reconcile(desired, driver.dump(), owned, draining={}, now=0.0, drain_timeout=60.0)
    assert driver.apply(result.ops) == []
    return result, driver.operations - before


def by_hand(*args: str) -> None:
    subprocess.run(["ipvsadm", *args], check=True)


def test_a_plan_goes_in_and_reads_back_exactly(driver: Driver) -> None:
    result, changes = converge(driver, PLAN, set())
    assert changes == len(PLAN) + sum(len(s.dests) for s in PLAN.values())
    assert driver.dump().services == PLAN
    assert result.owned == set(PLAN)


def test_a_second_run_makes_no_change(driver: Driver) -> None:
    first, _ = converge(driver, PLAN, set())
    second, changes = converge(driver, PLAN, set(first.owned))
    assert second.ops == ()
    assert changes == 0


def test_a_change_costs_exactly_its_own_operations(driver: Driver) -> None:
    first, _ = converge(driver, PLAN, set())
    owned = set(first.owned)
    heavier = PLAN[WEB].dests[0]._replace(weight=9)
    desired = {**PLAN, WEB: PLAN[WEB]._replace(dests=sort_dests([heavier, *PLAN[WEB].dests[1:]]))}
    result, changes = converge(driver, desired, owned)
    assert result.ops == (SetDest(WEB, heavier),)
    assert changes == 1

    desired[DNS] = desired[DNS]._replace(scheduler="mh", flags=("mh-fallback",), timeout=60)
    result, changes = converge(driver, desired, owned)
    assert result.ops == (SetService(desired[DNS]._replace(dests=())),)
    assert changes == 1

    extra = dest("198.18.1.3")
    desired[WEB] = desired[WEB]._replace(dests=sort_dests([*desired[WEB].dests, extra]))
    result, changes = converge(driver, desired, owned)
    assert result.ops == (AddDest(WEB, extra),)
    assert changes == 1
    assert driver.dump().services == desired


def test_a_service_made_by_hand_survives_and_is_reported(driver: Driver) -> None:
    by_hand("-A", "-t", "198.18.0.99:22", "-s", "rr")
    by_hand("-a", "-t", "198.18.0.99:22", "-r", "198.18.1.99:22", "-m")
    first, _ = converge(driver, PLAN, set())
    assert first.foreign == (HAND,)
    assert HAND not in first.owned
    emptied, _ = converge(driver, {}, set(first.owned))
    assert emptied.foreign == (HAND,)
    state = driver.dump()
    assert list(state.services) == [HAND]
    assert state.services[HAND].dests == (dest("198.18.1.99", 22),)

    wanted = VirtualService(HAND, "wlc", (), 0, (dest("198.18.1.1", 22),))
    blocked, changes = converge(driver, {HAND: wanted}, set())
    assert blocked.blocked == (HAND,)
    assert changes == 0
    assert driver.dump().services[HAND].scheduler == "rr"


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_loads(driver: Driver, scheduler: str) -> None:
    service = VirtualService(WEB, scheduler, (), 0, (dest("198.18.1.1"),))
    converge(driver, {WEB: service}, set())
    assert driver.dump([WEB]).services[WEB].scheduler == scheduler


def test_a_full_read_repairs_a_weight_left_at_zero(driver: Driver) -> None:
    first, _ = converge(driver, PLAN, set())
    by_hand("-e", "-t", "198.18.0.10:80", "-r", "198.18.1.2:8080", "-m", "-w", "0")
    assert driver.dump([WEB]).services[WEB] != PLAN[WEB]
    repaired, changes = converge(driver, PLAN, set(first.owned))
    planned = next(d for d in PLAN[WEB].dests if d.address == "198.18.1.2")
    assert planned.upper == 500  # the edit by hand cleared its threshold too
    assert repaired.ops == (SetDest(WEB, planned),)
    assert changes == 1
    assert driver.dump().services == PLAN


def test_reading_some_services_reads_only_those(driver: Driver) -> None:
    converge(driver, PLAN, set())
    state = driver.dump([WEB6, ServiceKey("TCP", "198.18.0.77", 1)])
    assert state.services == {WEB6: PLAN[WEB6]}
    assert set(state.counters) == {(WEB6, d.key) for d in PLAN[WEB6].dests}


def test_a_full_read_pauses_between_services_where_the_driver_reads_them_one_by_one(
    driver: Driver,
) -> None:
    converge(driver, PLAN, set())
    pauses: list[None] = []
    assert driver.dump(pause=lambda: pauses.append(None)).services == PLAN
    assert len(driver.stats(pause=lambda: pauses.append(None))) == len(PLAN)
    assert len(pauses) == (2 * len(PLAN) if driver.name == "pyroute2" else 0)  # one listing


def test_a_refused_operation_is_reported_and_the_rest_applied(driver: Driver) -> None:
    orphan = AddDest(ServiceKey("TCP", "198.18.0.77", 1), dest("198.18.1.1"))
    fine = reconcile({WEB: PLAN[WEB]}, KernelState.empty(), set(), draining={}, now=0,
                     drain_timeout=1).ops  # fmt: skip
    errors = driver.apply([orphan, *fine])
    assert len(errors) == 1
    assert errors[0].op in (orphan, None)  # ipvsadm -R does not say which line
    assert "198.18.0.77" in str(errors[0]) or "Service not defined" in str(errors[0])
    assert driver.dump().services == {WEB: PLAN[WEB]}


def test_stats_cover_every_service_and_real_server(driver: Driver) -> None:
    converge(driver, PLAN, set())
    stats = {entry.service.key: entry for entry in driver.stats()}
    assert set(stats) == set(PLAN)
    for key, entry in stats.items():
        assert entry.service == PLAN[key]
        assert [d.dest for d in entry.dests] == list(PLAN[key].dests)
        assert entry.stats.conns == 0
