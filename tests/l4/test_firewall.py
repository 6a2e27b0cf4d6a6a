"""The VIP guard's nftables text, from plans. Golden files: each plan case of testdata/
(tests/l4/test_plan.py) gives firewall_cases/CASE/update.json, the lines the agent feeds
`nft -f -` to fill empty sets. `pytest --update-golden` rewrites them; review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from l4.firewall import TABLE_DEFINITION, Openings, load_script, openings, update_script
from l4.ipvs import ServiceKey
from l4.plan import node_group_of, plan
from slb.resolve import resolve
from tests.golden import Golden
from tests.l4.test_plan import CASES, TESTDATA, load_case

GOLDEN = Path(__file__).parent / "firewall_cases"
SHIPPED = Path(__file__).parents[2] / "deploy" / "lb-node" / "nftables-openslb.nft"


def case_openings(case: str) -> Openings:
    node, group, snapshot = load_case(TESTDATA / case / "in.json")
    state = resolve(snapshot)
    group = group or next(iter(node_group_of(state.node_groups, node)), None)
    planned = plan(state, node, group)
    return openings(planned.vips, planned.services, planned.acls)


@pytest.mark.parametrize("case", CASES)
def test_update_matches_golden(case: str, golden: Golden) -> None:
    lines = update_script(Openings(), case_openings(case)).splitlines()
    golden.check(GOLDEN / case, {"update.json": lines}, inputs=())


def test_every_golden_directory_is_a_plan_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == CASES


def test_an_update_changes_only_the_elements_that_differ() -> None:
    """O(change): one listener replaced on a node of many costs one deletion and one
    addition, in one transaction, deletions first."""
    vip = "198.18.0.10"
    many = frozenset((vip, "tcp", port) for port in range(8000, 9000))
    known = Openings(frozenset({vip}), many | {(vip, "tcp", 80)})
    wanted = Openings(
        frozenset({vip}),
        many | {(vip, "udp", 53)},
        allowed=frozenset({(vip, "udp", 53, "198.18.10.0/24")}),
        restricted=frozenset({(vip, "udp", 53)}),
    )
    assert update_script(known, wanted).splitlines() == [
        f"delete element inet openslb_guard listeners4 {{ {vip} . tcp . 80 }}",
        f"add element inet openslb_guard listeners4 {{ {vip} . udp . 53 }}",
        f"add element inet openslb_guard restricted4 {{ {vip} . udp . 53 }}",
        f"add element inet openslb_guard allowed4 {{ {vip} . udp . 53 . 198.18.10.0/24 }}",
    ]  # fmt: skip
    assert update_script(wanted, wanted) == ""
    assert update_script(Openings(), Openings(frozenset({vip}))).splitlines() == [
        f"add element inet openslb_guard vips4 {{ {vip} }}"]  # fmt: skip


def test_a_load_replaces_the_whole_table_with_the_same_elements() -> None:
    opened = case_openings("l7-to-envoys")
    elements = update_script(Openings(), opened)
    assert elements.count("add element") == 4
    assert load_script(opened) == (
        "table inet openslb_guard\ndelete table inet openslb_guard\n" + TABLE_DEFINITION + elements
    )


def test_the_shipped_file_is_the_table_the_agent_loads() -> None:
    text = SHIPPED.read_text()
    assert text.endswith("\n\n" + load_script(Openings()))
    header = text.removesuffix(load_script(Openings())).splitlines()
    assert all(line.startswith("#") or not line for line in header)


def test_only_services_with_a_port_are_opened_each_by_its_protocol() -> None:
    keys = [
        ServiceKey("TCP", "198.18.0.10", 80),
        ServiceKey("UDP", "2001:2::10", 53),
        ServiceKey("SCTP", "198.18.0.10", 3868),
        ServiceKey("FWM", "0.0.0.0", 7),  # noqa: S104 - a firewall mark has no VIP
    ]
    assert openings(["198.18.0.10", "2001:2::10"], keys) == Openings(
        frozenset({"198.18.0.10", "2001:2::10"}),
        frozenset(
            {("198.18.0.10", "tcp", 80), ("2001:2::10", "udp", 53), ("198.18.0.10", "sctp", 3868)}
        ),
    )


def test_openings_combine() -> None:
    web = Openings(frozenset({"198.18.0.10"}), frozenset({("198.18.0.10", "tcp", 80)}))
    dns = Openings(frozenset({"198.18.0.53"}), frozenset({("198.18.0.53", "udp", 53)}))
    assert (web | dns).vips == {"198.18.0.10", "198.18.0.53"}
    assert (web | dns).listeners == web.listeners | dns.listeners
    assert web | Openings() == web
