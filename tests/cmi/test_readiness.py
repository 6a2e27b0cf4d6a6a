"""Readiness from the data planes' reports (pure)."""

from __future__ import annotations

from cmi.mirror import Mirror
from cmi.readiness import Readiness, of_services, readiness
from slb.model import NodeGroup
from slb.storage.status import TierStatus
from tests.cmi.test_steps import exposed, objects_of

GROUP = NodeGroup.model_validate(
    {"name": "edge", "nodes": [{"name": "lb1", "address": "198.18.255.15"},
                               {"name": "lb2", "address": "198.18.255.16"}]}
)  # fmt: skip


def l4(
    node: str, revision: int, error: str | None = None, error_revision: int | None = None
) -> TierStatus:
    return TierStatus("l4", node, "edge", revision, 0.0, error, error_revision)


def l7(
    node: str, revision: int, error: str | None = None, error_revision: int | None = None
) -> TierStatus:
    return TierStatus("l7", node, "edge", revision, 0.0, error, error_revision)


def test_programmed_once_every_node_serves_the_revision() -> None:
    nodes = {"lb1": l4("lb1", 7), "lb2": l4("lb2", 9)}
    envoys = {"e1": l7("e1", 7)}
    result = readiness(7, group_name="edge", group=GROUP, needs_l7=True, l4=nodes, l7=envoys)
    assert result.state == "programmed"
    assert "2 LB node(s) and 1 Envoy(s)" in result.message


def test_pending_names_who_is_behind() -> None:
    result = readiness(
        7, group_name="edge", group=GROUP, needs_l7=False, l4={"lb1": l4("lb1", 6)}, l7={}
    )
    assert result.state == "pending"
    assert "LB node lb1 serves revision 6" in result.message
    assert "LB node lb2 has not reported" in result.message
    assert (
        readiness(7, group_name="edge", group=None, needs_l7=False, l4={}, l7={}).state == "pending"
    )
    envoy_only = NodeGroup(name="edge")
    assert (
        readiness(7, group_name="edge", group=envoy_only, needs_l7=False, l4={}, l7={}).message
        == "node group 'edge' has no LB nodes for IPVS"
    )
    served = readiness(
        7, group_name="edge", group=envoy_only, needs_l7=True, l4={}, l7={"e1": l7("e1", 7)}
    )
    assert (served.state, served.message) == ("programmed", "revision 7 is live on 1 Envoy(s)")
    no_envoy = readiness(
        7,
        group_name="edge",
        group=GROUP,
        needs_l7=True,
        l4={"lb1": l4("lb1", 7), "lb2": l4("lb2", 7)},
        l7={},
    )
    assert "no Envoy of group 'edge'" in no_envoy.message


def test_errors_for_this_revision_win_and_old_ones_do_not_count() -> None:
    nodes = {"lb1": l4("lb1", 7), "lb2": l4("lb2", 7)}
    nack = {"e1": l7("e1", 6, "malformed certificate", 7)}
    result = readiness(7, group_name="edge", group=GROUP, needs_l7=True, l4=nodes, l7=nack)
    assert result.state == "error"
    assert "Envoy e1 rejected revision 7: malformed certificate" in result.message
    stale = {"e1": l7("e1", 8, "old NACK", 5)}
    assert (
        readiness(7, group_name="edge", group=GROUP, needs_l7=True, l4=nodes, l7=stale).state
        == "programmed"
    )
    other_group = {"e9": TierStatus("l7", "e9", "other", 1, 0.0)}
    assert (
        readiness(7, group_name="edge", group=GROUP, needs_l7=False, l4=nodes, l7=other_group).state
        == "programmed"
    )


def test_each_service_from_the_revision_that_last_changed_its_objects() -> None:
    mirror = Mirror()
    group = NodeGroup.model_validate(
        {"name": "default", "nodes": [{"name": "lb1", "address": "198.18.255.15"}]}
    )
    mirror.put(group, 1)
    cart, instance, *_ = objects_of(exposed("cart"))[::-1]
    mirror.put(cart, 4)
    mirror.put(instance, 6)
    for listener in exposed("cart").listeners:
        mirror.put(listener, 5)
    mirror.put(objects_of(exposed("bare"))[-2], 9)  # a Service alone: no listener, no instance
    at = {"lb1": TierStatus("l4", "lb1", "default", 6, 0.0)}
    envoys = {"e1": TierStatus("l7", "e1", "default", 5, 0.0)}
    assert of_services(mirror, l4=at, l7=envoys) == {
        "shop/cart": Readiness("pending", "waiting for revision 6: Envoy e1 serves revision 5")
    }
    envoys["e1"] = TierStatus("l7", "e1", "default", 6, 0.0)
    assert of_services(mirror, l4=at, l7=envoys)["shop/cart"].state == "programmed"
