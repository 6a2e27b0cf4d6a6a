"""The controller's copy of the store, and what others' writes mean for it (pure)."""

from __future__ import annotations

from cmi.cluster import sharing
from cmi.mirror import Mirror, service_owner, written_by_others
from slb.model import Listener, LoadBalancer, Service, StoredObject
from slb.snapshot import Change, Delete, Put, Snapshot, Stored
from tests.cmi.test_steps import PUBLIC, exposed, objects_of, served_instance


def test_a_snapshot_loads_with_who_owns_what() -> None:
    built = exposed("cart")
    objects: dict[str, dict[str, Stored[StoredObject]]] = {"Listener": {}, "Service": {}}
    objects["LoadBalancer"] = {"public": Stored(PUBLIC, 2)}
    for obj in objects_of(built):
        objects[obj.kind][obj.key] = Stored(obj, 5)
    mirror = Mirror()
    assert mirror.load(Snapshot(7, objects)) == 7
    assert mirror.owned == {"shop/cart": {(o.kind, o.key) for o in objects_of(built)}}
    assert mirror.revisions[("LoadBalancer", "public")] == 2
    assert set(mirror.of(LoadBalancer)) == {"public", served_instance(built).name}
    previous = mirror.previous("shop/cart")
    assert previous.service == built.service
    assert previous.load_balancer == served_instance(built)
    assert list(previous.listeners.values()) == list(built.listeners)
    assert mirror.previous("shop/other").service is None


def test_writes_keep_ownership_current() -> None:
    built = exposed("cart")
    (listener,) = built.listeners
    mirror = Mirror()
    mirror.apply([Put(o) for o in objects_of(built)], revision=3)
    assert mirror.revisions[("Listener", listener.name)] == 3
    mirror.apply([Delete("Listener", listener.name)], revision=4)
    assert ("Listener", listener.name) not in mirror.owned["shop/cart"]
    assert mirror.of(Listener) == {}
    mirror.refresh(("Listener", listener.name), Stored(listener, 6))
    assert mirror.of(Listener) == {listener.name: listener}
    mirror.of(Listener).clear()  # a copy: the caller's to keep while the mirror moves on
    assert mirror.of(Listener) == {listener.name: listener}
    assert ("Listener", listener.name) in mirror.owned["shop/cart"]
    mirror.refresh(("Service", "shop/cart"), None)
    assert mirror.of(Service) == {}
    assert ("Service", "shop/cart") not in mirror.owned["shop/cart"]


def test_only_service_owned_objects_have_a_service_owner() -> None:
    built = exposed("cart")
    assert [service_owner(o) for o in objects_of(built)] == ["shop/cart"] * 3
    assert service_owner(PUBLIC) is None


def test_others_writes_and_the_services_sharing_an_instance() -> None:
    batch = [
        Change(8, (("put", "Listener", "mine"),), {"who": "cmi-a"}),
        Change(9, (("put", "LoadBalancer", "public"), ("delete", "Listener", "ops")), {}),
    ]
    assert written_by_others(batch, "cmi-a") == {("LoadBalancer", "public"), ("Listener", "ops")}
    assert written_by_others(batch[:1], "cmi-a") == set()

    def labelled(expose: str | None) -> dict[str, object]:
        return {"metadata": {"labels": {"openslb.io/expose": expose} if expose else None}}

    services = [("shop/a", labelled("public")), ("shop/b", labelled("true")),
                ("shop/c", labelled(None)), ("shop/d", labelled("other"))]  # fmt: skip
    assert sharing(["public", "other"], services) == {"shop/a", "shop/d"}
    assert sharing([], services) == set()
