"""The incremental `Resolver` against `resolve`: after any sequence of changes, updating
by what changed gives what resolving everything gives. Pure; hypothesis drives it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from slb.model import KINDS, StoredObject
from slb.resolve import NameIndex, Resolver, resolve
from slb.snapshot import Snapshot, Stored

OPERATOR = {"kind": "Operator", "name": "alice"}
LABELS = [{"app": "web"}, {"app": "api"}, {"app": "web", "tier": "a"}, {"tier": "a"}, {}]
SELECTORS = [
    {"match_labels": {"app": "web"}},
    {"match_labels": {"app": "api", "tier": "a"}},
    {"match_expressions": [{"key": "tier", "operator": "Exists"}]},
]


def balancer(i: int, variant: int) -> dict[str, Any]:
    vip = [None, "198.18.0.10", "198.18.0.11"][variant % 3]
    return {"kind": "LoadBalancer", "name": f"lb{i}", "vip": vip, "pool": "default",
            "owner": OPERATOR, "node_group": ["a", "b"][variant // 3 % 2],
            "allowed_namespaces": [["shop"], ["shop", "other"]][variant // 6 % 2]}  # fmt: skip


def listener(i: int, variant: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "Listener", "name": f"l{i}", "load_balancer": f"lb{variant % 3}",
        "protocol": ["TCP", "HTTP"][variant // 3 % 2], "port": 80 + variant // 6 % 2,
        "target_port": "http", "created_at": float(variant % 4),
    }  # fmt: skip
    if variant % 5 == 4:  # a Service's own listener
        data["owner"] = {"kind": "Service", "name": f"shop/s{variant % 4}"}
    else:
        data["owner"] = OPERATOR
        data["selector"] = SELECTORS[variant % 3]
    if data["protocol"] == "HTTP" and variant % 2 and "selector" in data:
        picked = {"selector": SELECTORS[(variant + 1) % 3]}
        named = {"service": f"{['shop', 'other'][variant // 2 % 2]}/s{variant % 4}", "weight": 2}
        data["routes"] = [{"name": "r", "path_prefix": "/x", "forward_to": [picked, named]}]
    return data


def service(i: int, variant: int) -> dict[str, Any]:
    return {
        "kind": "Service", "namespace": ["shop", "other"][variant % 2], "name": f"s{i}",
        "labels": LABELS[variant % len(LABELS)], "load_balancer": "lb0",
        "ports": [{"name": "http", "port": 80}],
        "backends": {"http": [{"address": f"198.18.1.{variant % 3 + 1}", "port": 8080},
                              {"address": f"198.18.2.{i}", "port": 8080}]},
    }  # fmt: skip


def namespace(i: int, variant: int) -> dict[str, Any]:
    return {"kind": "Namespace", "name": ["shop", "other"][i % 2],
            "labels": {"team": str(variant % 2)}}  # fmt: skip


MAKERS = {"LoadBalancer": (balancer, 3), "Listener": (listener, 6), "Service": (service, 4),
          "Namespace": (namespace, 2)}  # fmt: skip
BASE = {"LoadBalancer": [1, 2, 7], "Listener": [0, 1, 2, 3, 6, 9], "Service": [0, 1, 2, 6],
        "Namespace": [0, 1]}  # fmt: skip
"""The variants every object starts as: VIPs, clashing ports, selectors that match."""
Step = tuple[str, int, int | None]
"""(kind, which object, its variant; None: deleted)."""

steps = st.lists(
    st.sampled_from(sorted(MAKERS)).flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            st.integers(0, MAKERS[kind][1] - 1),
            st.one_of(st.none(), st.integers(0, 23)),
        )
    ),
    min_size=1,
    max_size=60,
)


def build(kind: str, i: int, variant: int) -> StoredObject:
    data = MAKERS[kind][0](i, variant)
    data.pop("kind")
    return KINDS[kind].model_validate(data)


Objects = dict[str, dict[str, Stored[StoredObject]]]


def base_objects() -> Objects:
    """Every object there to start with: dense, so that changes reach one another."""
    objects: Objects = {k: {} for k in KINDS}
    for kind, (_, count) in MAKERS.items():
        for i in range(count):
            obj = build(kind, i, BASE[kind][i])
            objects[kind][obj.key] = Stored(obj, 0)
    return objects


def changed_objects(objects: Objects, step: Step, revision: int) -> tuple[Objects, str]:
    """The objects after `step`, and the key it touched."""
    kind, i, variant = step
    objects = {k: dict(v) for k, v in objects.items()}
    if variant is None:
        key = build(kind, i, 0).key
        objects[kind].pop(key, None)
    else:
        obj = build(kind, i, variant)
        key = obj.key
        objects[kind][key] = Stored(obj, revision)
    return objects, key


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([None, "a"]))
def test_updating_by_what_changed_equals_resolving_everything(
    changes: list[Step], group: str | None
) -> None:
    objects = base_objects()
    resolver = Resolver(group)
    assert resolver.update(Snapshot(0, objects), None) == resolve(Snapshot(0, objects), group)
    for revision, step in enumerate(changes, start=1):
        objects, key = changed_objects(objects, step, revision)
        snapshot = Snapshot(revision, objects)
        assert resolver.update(snapshot, [(step[0], key)]) == resolve(snapshot, group)


def test_listeners_a_change_does_not_reach_keep_their_objects() -> None:
    """Downstream caches skip a listener by identity: one Service's change re-resolves
    its own listener only."""
    objects: dict[str, dict[str, Stored[StoredObject]]] = {k: {} for k in KINDS}
    for kind, i, variant in [("LoadBalancer", 0, 1), ("LoadBalancer", 1, 2)]:
        objects[kind][f"lb{i}"] = Stored(build(kind, i, variant), 1)
    for i in range(4):
        own = build("Service", i, 0)
        objects["Service"][own.key] = Stored(own, 1)
        data = {**listener(i, 4), "port": 80 + i}  # variant 4: a Service's own, on lb1
        data["owner"] = {"kind": "Service", "name": own.key}
        data.pop("kind")
        objects["Listener"][f"l{i}"] = Stored(KINDS["Listener"].model_validate(data), 1)
    resolver = Resolver()
    before = resolver.update(Snapshot(1, objects), None)
    assert len(before.listeners) == 4
    changed = build("Service", 2, 2)
    services = {**objects["Service"], changed.key: Stored(changed, 2)}
    after = resolver.update(Snapshot(2, {**objects, "Service": services}),
                            [("Service", changed.key)])  # fmt: skip
    same = [a is b for a, b in zip(before.listeners, after.listeners, strict=True)]
    assert same == [True, True, False, True]


def test_a_name_index_holds_one_name_bare_and_drops_emptied_keys() -> None:
    index: NameIndex[str] = NameIndex()
    index.add("shop/web", "a")
    index.add("shop/web", "a")
    assert index.get("shop/web") == {"a"}
    index.add("shop/web", "b")
    got = index.get("shop/web")
    got.add("c")  # a copy: the index is not changed through it
    assert index.get("shop/web") == {"a", "b"}
    index.discard("shop/web", "a")
    assert index.get("shop/web") == {"b"}
    index.discard("shop/web", "x")
    index.discard("shop/web", "b")
    assert index.get("shop/web") == set()
    assert index._names == {}  # churn leaves nothing behind


def test_a_service_a_rule_names_is_picked_up_when_it_appears() -> None:
    """Neither selector picks it (no labels), so only the rule's name can lead to it."""
    objects: Objects = {k: {} for k in KINDS}
    objects["LoadBalancer"]["lb0"] = Stored(build("LoadBalancer", 0, 1), 1)
    data = {**listener(0, 3)}
    data.pop("kind")
    data["routes"] = [{"name": "r", "path_prefix": "/x", "forward_to": [{"service": "shop/s2"}]}]
    objects["Listener"]["l0"] = Stored(KINDS["Listener"].model_validate(data), 1)
    resolver = Resolver()
    before = resolver.update(Snapshot(1, objects), None)
    assert before.listeners[0].routes[0].targets[0].backends == ()
    named = build("Service", 2, 4)  # namespace shop, no labels
    objects["Service"][named.key] = Stored(named, 2)
    after = resolver.update(Snapshot(2, objects), [("Service", named.key)])
    assert after == resolve(Snapshot(2, objects))
    assert after.listeners[0].routes[0].targets[0].services == ("shop/s2",)
    assert len(after.listeners[0].routes[0].targets[0].backends) == 2
