"""The VIP guard's nftables text, from plans. Golden files: each plan case of testdata/
(tests/l4/test_plan.py) gives firewall_cases/CASE/update.json, the lines the agent feeds
`nft -f -` to fill empty sets. `pytest --update-golden` rewrites them; review the diff."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devbed.netns import Netns
from l4.drivers.nft import NftDriver
from l4.firewall import (
    TABLE,
    TABLE_DEFINITION,
    Openings,
    OpeningsBook,
    canonical,
    held,
    load_script,
    openings,
    rate_drops,
    update_script,
)
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
    return openings(planned.vips, planned.services, planned.acls, planned.rates)


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


KEYS = [
    ServiceKey(protocol, address, port)
    for protocol in ("TCP", "UDP")
    for address in ("198.18.0.10", "198.18.0.11", "2001:2::10")
    for port in (80, 443)
] + [ServiceKey("FWM", "0.0.0.0", 7)]  # noqa: S104 - a firewall mark has no VIP
NETS = ("198.18.9.0/24", "198.18.10.1/32", "2001:2:9::/48")
_nets = st.lists(st.sampled_from(NETS), max_size=2, unique=True).map(tuple)
_plans = st.lists(st.sampled_from(KEYS), unique=True).flatmap(
    lambda keys: st.tuples(
        st.just(keys),
        st.dictionaries(st.sampled_from(keys), st.tuples(_nets, _nets)) if keys else st.just({}),
        st.dictionaries(st.sampled_from(keys), st.integers(1, 3)) if keys else st.just({}),
    )
)


def by_definition(keys: list[ServiceKey], acls: dict[Any, Any], rates: dict[Any, int]) -> Openings:
    """Openings as they are defined: each service's listener; restricted if it has allowed
    networks; the networks of its own address family; its rate."""
    ported = [key for key in keys if key.protocol != "FWM"]

    def of(key: ServiceKey) -> tuple[str, str, int]:
        return (key.address, key.protocol.lower(), key.port)

    def rules(which: int) -> frozenset[tuple[str, str, int, str]]:
        return frozenset(
            (*of(key), net)
            for key in ported
            for net in acls.get(key, ((), ()))[which]
            if (":" in net) == (":" in key.address)
        )

    return Openings(
        frozenset(key.address for key in keys),
        frozenset(map(of, ported)),
        frozenset(of(key) for key in ported if acls.get(key, ((), ()))[0]),
        rules(0),
        rules(1),
        frozenset((*of(key), rates[key]) for key in ported if key in rates),
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(_plans, min_size=1, max_size=6))
def test_a_kept_book_gives_what_the_inputs_alone_give(plans: list[tuple[Any, ...]]) -> None:
    """However the plans before it differed, the book's openings are the definition's."""
    book = OpeningsBook()
    for keys, acls, rates in plans:
        vips = {key.address for key in keys}
        assert book.openings(vips, frozenset(keys), acls, rates) == by_definition(keys, acls, rates)


def test_openings_combine() -> None:
    web = Openings(frozenset({"198.18.0.10"}), frozenset({("198.18.0.10", "tcp", 80)}))
    dns = Openings(frozenset({"198.18.0.53"}), frozenset({("198.18.0.53", "udp", 53)}))
    assert (web | dns).vips == {"198.18.0.10", "198.18.0.53"}
    assert (web | dns).listeners == web.listeners | dns.listeners
    assert web | Openings() == web


def test_a_rate_change_rewrites_the_limits_chain_and_only_then() -> None:
    """#17 item 3: a TCP or UDP listener's connections_per_second is one rule of the chain
    `limits`; the chain is rewritten whole when a rate changes, in the same transaction as
    the elements, and left alone when none did."""
    web, dns = ServiceKey("TCP", "198.18.0.10", 80), ServiceKey("UDP", "2001:2::53", 53)
    vips = ["198.18.0.10", "2001:2::53"]
    before = openings(vips, [web, dns], rates={web: 50})
    after = openings(vips, [web, dns], rates={web: 50, dns: 1000})
    assert update_script(before, after).splitlines() == [
        "flush chain inet openslb_guard connection_rates",
        "add rule inet openslb_guard connection_rates ip daddr 198.18.0.10 meta l4proto tcp "
        "th dport 80 limit rate over 50/second burst 50 packets counter drop "
        'comment "198.18.0.10 tcp 80"',
        "add rule inet openslb_guard connection_rates ip6 daddr 2001:2::53 meta l4proto udp "
        "th dport 53 limit rate over 1000/second burst 1000 packets counter drop "
        'comment "2001:2::53 udp 53"',
    ]
    assert update_script(after, after) == ""
    assert update_script(after, openings(vips, [web, dns])).splitlines() == [
        "flush chain inet openslb_guard connection_rates"]  # fmt: skip
    assert (after | before).rates == after.rates  # the wanted side's, as the access control


def test_rate_drops_are_read_from_the_limits_chain_counters() -> None:
    """`nft -j list chain inet openslb_guard connection_rates`, as nftables 1.0 prints it."""
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"chain": {"family": "inet", "table": "openslb_guard", "name": "connection_rates",
                   "handle": 9}},
        {"rule": {"family": "inet", "table": "openslb_guard", "chain": "connection_rates",
                  "handle": 31,
                  "comment": "198.18.0.10 tcp 80",
                  "expr": [{"match": {"op": "==", "left": {"payload": {
                               "protocol": "ip", "field": "daddr"}}, "right": "198.18.0.10"}},
                           {"limit": {"rate": 50, "burst": 50, "per": "second", "inv": True}},
                           {"counter": {"packets": 17, "bytes": 1020}},
                           {"drop": None}]}},
    ]}  # fmt: skip
    assert rate_drops(listing) == {("198.18.0.10", "tcp", 80): 17}
    assert rate_drops({"nftables": []}) == {}


@pytest.fixture
def nft_netns() -> Iterator[Netns]:
    """A network namespace of its own for real nftables on the host."""
    netns = Netns(f"t-nft-{os.getpid()}")
    try:
        yield netns
    finally:
        netns.delete()


def test_held_reads_back_what_each_script_wrote(nft_netns: Netns) -> None:
    """The repair's drift check against real nftables: what a load and an update leave is
    read back as written (networks and addresses as nft prints them), every case with the
    one shape; a deleted element or a flushed chain shows."""
    nft = NftDriver()

    def listing() -> tuple[str, Openings] | None:
        return held(nft_netns.call(nft.list_json, "table", TABLE))

    shapes = set()
    for case in CASES:
        opened = case_openings(case)
        nft_netns.call(nft.run, load_script(opened))
        found = listing()
        assert found is not None, case
        assert found[1] == canonical(opened), case
        shapes.add(found[0])
        more = opened | openings(["198.18.0.99"], [ServiceKey("TCP", "198.18.0.99", 443)])
        nft_netns.call(nft.run, update_script(opened, more))
        assert listing() == (found[0], canonical(more)), case
    assert len(shapes) == 1

    nft_netns.call(nft.run, f"delete element {TABLE} listeners4 {{ 198.18.0.99 . tcp . 443 }}")
    after = listing()
    assert after is not None
    assert after[1] == canonical(opened | Openings(frozenset({"198.18.0.99"}))), (
        "the deleted listener is missed"
    )
    nft_netns.call(nft.run, f"flush chain {TABLE} vip4")
    assert listing() != after, "a flushed chain changes the shape"


def test_canonical_writes_addresses_as_nft_prints_them() -> None:
    written = Openings(
        vips=frozenset({"2001:DB8:0::10"}),
        allowed=frozenset({("198.18.0.10", "tcp", 80, "198.19.1.1")}),
        denied=frozenset({("198.18.0.10", "tcp", 80, "198.19.0.5/16")}),
    )
    assert canonical(written) == Openings(
        vips=frozenset({"2001:db8::10"}),
        allowed=frozenset({("198.18.0.10", "tcp", 80, "198.19.1.1/32")}),
        denied=frozenset({("198.18.0.10", "tcp", 80, "198.19.0.0/16")}),
    )


def test_held_refuses_what_the_agent_never_writes() -> None:
    rule = {"rule": {"family": "inet", "table": "openslb_guard", "chain": "connection_rates",
                     "comment": "not three words", "expr": []}}  # fmt: skip
    assert held({"nftables": [rule]}) is None
    ranged = {
        "set": {
            "family": "inet",
            "name": "allowed4",
            "table": "openslb_guard",
            "elem": [{"concat": ["198.18.0.10", "tcp", 80, {"range": ["a", "b"]}]}],
        }
    }
    assert held({"nftables": [ranged]}) is None
