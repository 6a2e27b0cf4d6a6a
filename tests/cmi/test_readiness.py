"""A Service's readiness, from the revision that last changed its objects (the rule itself:
tests/slb/test_readiness.py)."""

from __future__ import annotations

from cmi.mirror import Mirror
from cmi.readiness import held, of_services
from slb.model import NodeGroup
from slb.readiness import Readiness
from slb.storage.status import TierStatus
from tests.cmi.test_steps import exposed, objects_of


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
    assert of_services(mirror, l4=at, l7=envoys)["shop/cart"].state == "served"


def test_a_port_no_node_serves_keeps_the_service_pending() -> None:
    """A gRPC port and a TCP port in an Envoy-only group: the Envoy serves the first; no LB
    node serves the second, so the Service is not Programmed."""
    mirror = Mirror()
    mirror.put(NodeGroup(name="default"), 1)
    ports = [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}, {"name": "db", "port": 5432}]
    built = exposed("mixed", ports=ports)
    for obj in [*objects_of(built), *built.listeners]:
        mirror.put(obj, 3)
    envoys = {"e1": TierStatus("l7", "e1", "default", 3, 0.0)}
    now = of_services(mirror, l4={}, l7=envoys)["shop/mixed"]
    assert (now.state, now.message) == ("pending", "node group 'default' has no LB nodes for IPVS")


def test_the_services_a_holding_data_plane_concerns() -> None:
    mirror = Mirror()
    lb1 = {"name": "lb1", "address": "198.18.255.15"}
    mirror.put(NodeGroup.model_validate({"name": "default", "nodes": [lb1]}), 1)
    grpc = exposed("cart")  # a gRPC port: both tiers
    tcp = exposed("db", ports=[{"name": "pg", "port": 5432}])
    for obj in [*objects_of(grpc), *grpc.listeners, *objects_of(tcp), *tcp.listeners]:
        mirror.put(obj, 2)
    empty = "the store is empty"
    assert held(mirror, alarms={}, l4={}) == {}
    assert held(mirror, alarms={"xds": empty}, l4={}) == {
        "shop/cart": f"the xDS server: {empty}"}  # fmt: skip
    assert held(mirror, alarms={"l4 lb1": empty}, l4={}) == {
        "shop/cart": f"LB node lb1: {empty}", "shop/db": f"LB node lb1: {empty}"}  # fmt: skip
    # a node its group does not list, reporting the group
    lb9 = {"lb9": TierStatus("l4", "lb9", "default", 2, 0.0)}
    assert set(held(mirror, alarms={"l4 lb9": empty}, l4=lb9)) == {"shop/cart", "shop/db"}
    assert held(mirror, alarms={"l4 lb7": empty}, l4=lb9) == {}
