"""Pure rules of what the console shows: a listener's state from the nodes' reports; and
the read model those rules read, kept current from a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from slb.model import Listener, LoadBalancer, Service, StoredObject
from slb.snapshot import Delete, Put, Snapshot, Stored
from slb.storage.status import TierStatus
from slb.storage.store import Store
from tests.slb.test_resolver import Step, base_objects, changed_objects
from tests.slb.test_resolver import steps as resolver_steps
from web.readmodel import ReadModel
from web.state import (
    Boards,
    ListenerStates,
    PlacementBook,
    listener_backends,
    listener_states,
    node_state,
    placements,
    preview,
)


def snapshot(*objects: tuple[StoredObject, int], revision: int = 100) -> Snapshot:
    by_kind: dict[str, dict[str, Stored[StoredObject]]] = {}
    for obj, rev in objects:
        by_kind.setdefault(obj.kind, {})[obj.key] = Stored(obj, rev)
    return Snapshot(revision, by_kind)


def listener(
    name: str = "web", protocol: str = "HTTP", lb: str = "public", **extra: Any
) -> Listener:
    return Listener.model_validate(
        {"name": name, "load_balancer": lb, "protocol": protocol, "port": 80,
         "selector": {"match_labels": {"app": "shop"}}, "target_port": "http",
         "owner": {"kind": "Operator", "name": "alice"},
         **({"health_check": None} if protocol == "UDP" else {}), **extra}
    )  # fmt: skip


def balancer(
    name: str = "public", group: str = "default", vip: str | None = "198.18.0.10"
) -> LoadBalancer:
    return LoadBalancer.model_validate(
        {"name": name, "vip": vip, "pool": None if vip else "default", "node_group": group,
         "owner": {"kind": "Operator", "name": "alice"}, "allowed_namespaces": ["shop"]}
    )  # fmt: skip


def report(tier: str, node: str, revision: int, group: str = "default", **kw: Any) -> TierStatus:
    return TierStatus(tier, node, group, revision, 0.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "needed", "state"),
    [
        (report("l4", "n", 10), 10, "served"),
        (report("l4", "n", 12), 10, "served"),
        (report("l4", "n", 9), 10, "pending"),
        (report("l7", "n", 9, error="NACK", error_revision=10), 10, "error"),
        (report("l7", "n", 9, error="NACK", error_revision=8), 10, "pending"),  # an old error
        (report("l7", "n", 10, error="NACK", error_revision=11), 10, "served"),
    ],
)
def test_node_state(status: TierStatus, needed: int, state: str) -> None:
    assert node_state(status, needed).state == state


def test_needed_revision_is_the_newest_of_listener_and_instance() -> None:
    snap = snapshot((listener(), 7), (balancer(), 9))
    boards = Boards(l4={"n1": report("l4", "n1", 8)}, l7={"e1": report("l7", "e1", 9)})
    state = listener_states(snap, boards)["web"]
    assert state.needed_revision == 9
    assert state.state == "pending"
    assert [n.state for n in state.nodes] == ["pending", "served"]


def test_l4_listeners_wait_for_l4_nodes_only_and_other_groups_do_not_count() -> None:
    snap = snapshot((listener(protocol="TCP"), 5), (balancer(group="edge"), 1))
    boards = Boards(l4={"n1": report("l4", "n1", 5, group="edge"),
                        "n2": report("l4", "n2", 1, group="default")})  # fmt: skip
    state = listener_states(snap, boards)["web"]
    assert state.state == "served"
    assert [n.node for n in state.nodes] == ["n1"]


def test_missing_instance_is_an_error_and_a_vip_wait_is_pending() -> None:
    gone = listener_states(snapshot((listener(lb="nosuch"), 5)), Boards())["web"]
    assert (gone.state, gone.reason) == ("error", "load balancer 'nosuch' does not exist")
    waiting = listener_states(snapshot((listener(), 5), (balancer(vip=None), 1)), Boards())["web"]
    assert waiting.state == "pending"
    assert "waits for a VIP" in waiting.reason


def test_preview_counts_ready_endpoints_on_the_target_port() -> None:
    svc = Service.model_validate(
        {"namespace": "shop", "name": "cart", "labels": {"app": "shop"}, "load_balancer": "public",
         "ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}],
         "backends": {
             "http": [{"address": "198.18.10.1", "port": 8080},
                      {"address": "198.18.10.2", "port": 8080, "conditions": {"ready": False}},
                      {"address": "198.18.10.3", "port": 8080,
                       "conditions": {"ready": False, "serving": True, "terminating": True}}],
             "admin": [{"address": "198.18.10.1", "port": 9000}]}}
    )  # fmt: skip
    snap = snapshot((svc, 3))
    (row,) = preview(snap, "app=shop", "http").services
    assert (row.ready, row.total) == (1, 3)
    (row,) = preview(snap, "app=shop").services
    assert (row.ready, row.total) == (2, 4)
    assert preview(snap, "app=other").services == ()
    assert preview(snap, "").error is None
    assert "unbalanced" in (preview(snap, "app in (x").error or "")


def test_the_console_shows_only_the_services_the_instance_admits() -> None:
    """#14: the preview under the selector field and a listener's backends follow the rule
    the data planes follow (`slb.resolve`): another namespace's look-alike is left out, and
    the preview says how many were."""

    def svc(namespace: str, address: str) -> Service:
        return Service.model_validate(
            {"namespace": namespace, "name": "cart", "labels": {"app": "shop"},
             "load_balancer": "public", "ports": [{"name": "http", "port": 80}],
             "backends": {"http": [{"address": address, "port": 8080}]}}
        )  # fmt: skip

    snap = snapshot((balancer(), 1), (listener(), 2), (svc("shop", "198.18.10.1"), 3),
                    (svc("intruder", "198.18.66.1"), 4))  # fmt: skip
    found = preview(snap, "app=shop", "http", "public")
    assert ([r.key for r in found.services], found.outside) == (["shop/cart"], 1)
    assert found.as_json()["outside_namespaces"] == 1
    assert len(preview(snap, "app=shop").services) == 2  # no instance chosen yet: all
    backends = listener_backends(snap, Listener.model_validate(listener().model_dump()))
    assert [(key, str(b.address)) for key, b, _ in backends] == [("shop/cart", "198.18.10.1")]


def test_the_read_model_reads_what_changed_and_drops_its_json(store: Store) -> None:
    store.apply([Put(balancer()), Put(listener()), Put(listener("api"))])
    model = ReadModel()
    before = model.snapshot(store)
    web, api = before.objects["Listener"]["web"], before.objects["Listener"]["api"]
    balancer_json = model.as_json(before.objects["LoadBalancer"]["public"])
    web_json, api_json = model.as_json(web), model.as_json(api)
    assert model.as_json(web) is web_json  # serialised once per revision

    store.apply([Put(listener(port=81)), Delete("Listener", "api")])
    after = model.snapshot(store)
    assert after.revision == store.revision()
    assert after.get(Listener, "web") == listener(port=81)
    assert "api" not in after.objects["Listener"]
    untouched = after.objects["LoadBalancer"]["public"]
    assert untouched is before.objects["LoadBalancer"]["public"]
    assert model.as_json(untouched) is balancer_json
    # The forms of what changed are gone (of a deleted object too), not kept as stale.
    assert model.as_json(api) is not api_json
    assert model.as_json(web) is not web_json
    assert model.as_json(after.objects["Listener"]["web"])["port"] == 81


def test_the_read_models_placements_follow_the_changes(store: Store) -> None:
    store.apply([Put(balancer()), Put(listener()), Put(listener("api", port=81))])
    model = ReadModel()
    first, placed = model.placed(store)
    assert placed == placements(first)
    assert [p.rejection for p in placed.values()] == [None, None]
    # api moves to web's port on the same VIP: the newer one is refused
    store.apply([Put(listener("api", port=80, created_at=5.0))])
    second, placed = model.placed(store)
    assert placed == placements(second)
    assert placed["api"].rejection is not None
    assert placed["web"].rejection is None
    store.apply([Delete("LoadBalancer", "public")])
    third, placed = model.placed(store)
    assert placed == placements(third)
    assert placed["web"].rejection is not None
    assert model.placed(store)[1] is placed  # nothing moved: nothing placed again


@settings(max_examples=200, deadline=None)
@given(resolver_steps)
def test_placements_kept_by_the_change_stream_equal_placing_everything(
    changes: list[Step],
) -> None:
    """#18: the console re-places only what a change reaches; the result is the same."""
    objects = base_objects()
    book = PlacementBook()
    assert book.update(Snapshot(0, objects), None) == placements(Snapshot(0, objects))
    for revision, step in enumerate(changes, start=1):
        before = book.placed
        objects, key = changed_objects(objects, step, revision)
        snapshot = Snapshot(revision, objects)
        assert book.update(snapshot, [(step[0], key)]) == placements(snapshot)
        assert book.placed is not before  # a view made before keeps its own


def test_listener_states_are_worked_out_only_when_asked_for() -> None:
    snap = snapshot((listener(), 5), (balancer(), 1))
    states = ListenerStates(placements(snap), Boards())
    assert len(states) == 1
    assert states._known == {}
    assert states["web"] == listener_states(snap, Boards())["web"]
    assert set(states._known) == {"web"}
    assert list(states) == ["web"]
