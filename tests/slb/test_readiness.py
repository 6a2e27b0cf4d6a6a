"""The one readiness rule (pure): cmi's condition and the console both ask it."""

from __future__ import annotations

from slb.model import NodeGroup
from slb.readiness import Readiness, combined, readiness
from slb.storage.status import TierStatus

GROUP = NodeGroup.model_validate(
    {"name": "edge", "nodes": [{"name": "lb1", "address": "198.18.255.15"},
                               {"name": "lb2", "address": "198.18.255.16"}]}
)  # fmt: skip
ENVOY_ONLY = NodeGroup(name="edge")


def l4(
    node: str, revision: int, error: str | None = None, error_revision: int | None = None,
    group: str = "edge",
) -> TierStatus:  # fmt: skip
    return TierStatus("l4", node, group, revision, 0.0, error, error_revision)


def l7(
    node: str, revision: int, error: str | None = None, error_revision: int | None = None
) -> TierStatus:
    return TierStatus("l7", node, "edge", revision, 0.0, error, error_revision)


def ready(
    group: NodeGroup | None, *, is_l7: bool, nodes: dict[str, TierStatus],
    envoys: list[TierStatus] | None = None, needed: int = 7,
) -> Readiness:  # fmt: skip
    return readiness(needed, group_name="edge", group=group, l7=is_l7, lb_reports=nodes,
                     envoys=envoys or [])  # fmt: skip


def test_served_once_every_node_serves_the_revision() -> None:
    result = ready(GROUP, is_l7=True, nodes={"lb1": l4("lb1", 7), "lb2": l4("lb2", 9)},
                   envoys=[l7("e1", 7)])  # fmt: skip
    assert (result.state, result.message) == (
        "served", "revision 7 is live on 2 LB node(s) and 1 Envoy(s)")  # fmt: skip
    assert [r.node for r in result.reports] == ["lb1", "lb2", "e1"]


def test_pending_names_who_is_behind() -> None:
    result = ready(GROUP, is_l7=False, nodes={"lb1": l4("lb1", 6)})
    assert result.state == "pending"
    assert "LB node lb1 serves revision 6" in result.message
    assert "LB node lb2 has not reported" in result.message
    no_envoy = ready(GROUP, is_l7=True, nodes={"lb1": l4("lb1", 7), "lb2": l4("lb2", 7)})
    assert "no Envoy of group 'edge' is connected" in no_envoy.message


def test_a_port_no_node_serves_is_not_served() -> None:
    """An Envoy-only group serves L7 listeners, and no TCP or UDP one."""
    assert ready(None, is_l7=False, nodes={}).message == "node group 'edge' does not exist"
    assert (ready(ENVOY_ONLY, is_l7=False, nodes={}, envoys=[l7("e1", 7)]).message
            == "node group 'edge' has no LB nodes for IPVS")  # fmt: skip
    served = ready(None, is_l7=True, nodes={}, envoys=[l7("e1", 7)])
    assert (served.state, served.message) == ("served", "revision 7 is live on 1 Envoy(s)")


def test_a_node_that_reports_the_group_counts_though_the_group_does_not_list_it() -> None:
    """`l4.node_group` can put a node in a group; another group's nodes never count."""
    nodes = {"lb9": l4("lb9", 5), "other": l4("other", 1, group="default")}
    result = ready(None, is_l7=False, nodes=nodes)
    assert "LB node lb9 serves revision 5" in result.message
    assert [r.node for r in result.reports] == ["lb9"]


def test_errors_for_this_revision_win_and_others_do_not_count() -> None:
    nodes = {"lb1": l4("lb1", 7), "lb2": l4("lb2", 7)}
    result = ready(GROUP, is_l7=True, nodes=nodes, envoys=[l7("e1", 6, "bad cert", 7)])
    assert result.state == "error"
    assert "Envoy e1 rejected revision 7: bad cert" in result.message
    assert ready(GROUP, is_l7=True, nodes=nodes, envoys=[l7("e1", 8, "old NACK", 5)]).state \
        == "served"  # fmt: skip
    # a NACK of a later revision: the Envoy still serves this one
    assert ready(GROUP, is_l7=True, nodes=nodes, envoys=[l7("e1", 7, "NACK", 9)]).state \
        == "served"  # fmt: skip


def test_a_node_that_fails_the_revision_it_reports_is_an_error() -> None:
    nodes = {"lb1": l4("lb1", 7, "netlink: EPERM", 7), "lb2": l4("lb2", 7)}
    assert ready(GROUP, is_l7=False, nodes=nodes).state == "error"


def test_a_node_holding_its_last_good_state_serves_what_it_served_and_says_why() -> None:
    held = "holding: the store is empty: nothing wrote it since it was created or emptied"
    nodes = {"lb1": l4("lb1", 7, held), "lb2": l4("lb2", 9)}
    assert ready(GROUP, is_l7=False, nodes=nodes).state == "served"
    behind = ready(GROUP, is_l7=False, nodes=nodes, needed=8)
    assert behind.state == "pending"
    assert "LB node lb1 keeps its last good state (the store is empty:" in behind.message


def test_a_service_is_as_ready_as_its_least_ready_port() -> None:
    grpc = ready(ENVOY_ONLY, is_l7=True, nodes={}, envoys=[l7("e1", 7)])
    tcp = ready(ENVOY_ONLY, is_l7=False, nodes={}, envoys=[l7("e1", 7)])
    both = combined([grpc, tcp])
    assert (both.state, both.message) == ("pending", "node group 'edge' has no LB nodes for IPVS")
    with_nodes = [ready(GROUP, is_l7=t, nodes={"lb1": l4("lb1", 7), "lb2": l4("lb2", 7)},
                        envoys=[l7("e1", 7)]) for t in (False, True)]  # fmt: skip
    assert combined(with_nodes).message == "revision 7 is live on 2 LB node(s) and 1 Envoy(s)"
