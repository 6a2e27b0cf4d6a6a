"""The snapshot cache gives exactly what the pure translation gives, and reuses what did
not change."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from hypothesis import given, settings

from l7.cache import GroupSnapshot, Resource, SnapshotCache, changed
from l7.translate import translate
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPES
from l7.translate.listener import serialized_listener
from slb.model import Backend, Service
from slb.resolve import Resolver, resolve
from slb.snapshot import Snapshot, Stored, namespace_labels
from tests.l7.test_translate import CASES, load_case
from tests.slb.test_resolver import Step, base_objects, changed_objects
from tests.slb.test_resolver import steps as resolver_steps


@pytest.mark.parametrize("name", CASES)
def test_the_cache_serves_what_the_translation_says(name: str) -> None:
    case = load_case(name)
    snapshot = case.snapshot()
    state, namespaces = resolve(snapshot), namespace_labels(snapshot)
    expected = translate(state, case.node_group, case.keys, namespaces)
    built = SnapshotCache().build(state, case.keys, namespaces)
    group = built.get(case.node_group) or GroupSnapshot.empty(case.node_group, state.revision)
    for type_url in TYPES:
        assert group.versions(type_url) == {
            n: Resource.of(n, m).version for n, m in expected.by_type[type_url].items()
        }, type_url
    assert list(group.problems) == expected.problems


def with_backends(snapshot: Snapshot, key: str, port: str, backends: list[Backend]) -> Snapshot:
    objects = {kind: dict(by_key) for kind, by_key in snapshot.objects.items()}
    service = objects["Service"][key].obj
    assert isinstance(service, Service)
    updated = service.model_copy(update={"backends": {**service.backends, port: tuple(backends)}})
    objects["Service"][key] = Stored(updated, snapshot.revision + 1)
    return Snapshot(snapshot.revision + 1, objects)


def test_an_endpoint_change_rebuilds_and_changes_endpoints_only() -> None:
    case = load_case("grpc-methods")
    before = case.snapshot()
    cache = SnapshotCache()
    first = cache.build(resolve(before), case.keys)["default"]
    after = with_backends(
        before,
        "shop/cart",
        "grpc",
        [Backend(address="198.18.3.9", port=50051)],
    )
    second = cache.build(resolve(after), case.keys)["default"]
    assert second.revision == before.revision + 1
    for type_url in (LISTENER, ROUTE, CLUSTER):
        for name, resource in second.resources[type_url].items():
            assert resource is first.resources[type_url][name]  # reused, not rebuilt
    # The listener's own cluster and its route without a selector forward to shop/cart.
    assert changed(first, second) == {ENDPOINT: (2, 0)}
    for name in ("cart", "cart/internal"):
        assert second.resources[ENDPOINT][name].version != first.resources[ENDPOINT][name].version
    assert second.resources[ENDPOINT]["cart/checkout"].version == (
        first.resources[ENDPOINT]["cart/checkout"].version
    )


def test_removed_listeners_leave_the_cache() -> None:
    case = load_case("node-groups")
    cache = SnapshotCache()
    built = cache.build(resolve(case.snapshot()), case.keys)
    assert set(built) == {"default", "edge"}
    assert sorted(built["edge"].resources[LISTENER]) == ["edge-owned", "edge-web"]
    assert sorted(built["default"].resources[LISTENER]) == ["web"]
    emptied = Snapshot(9, {"LoadBalancer": case.snapshot().objects["LoadBalancer"]})
    rebuilt = cache.build(resolve(emptied), case.keys)
    assert rebuilt == {}  # no listeners and no declared node groups
    assert changed(built["edge"], GroupSnapshot.empty("edge", 9))[LISTENER] == (0, 2)


MESSAGES = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}


@pytest.mark.parametrize("name", CASES)
def test_every_served_resource_is_in_canonical_form(name: str) -> None:
    """Most resources are assembled from bytes for speed: each must be exactly what
    serializing its message gives, or equal configurations could hash differently."""
    case = load_case(name)
    built = SnapshotCache().build(resolve(case.snapshot()), case.keys)
    for group in built.values():
        for type_url, resources in group.resources.items():
            for resource in resources.values():
                raw = resource.body.value
                assert resource.body.type_url == type_url
                message = MESSAGES[type_url].FromString(raw)
                assert message.SerializeToString(deterministic=True) == raw, resource


def test_a_renamed_route_gets_endpoints_under_its_new_name() -> None:
    case = load_case("http-routes")
    cache = SnapshotCache()
    before = case.snapshot()
    first = cache.build(resolve(before), case.keys)["default"]
    assert "web/api" in first.resources[ENDPOINT]
    objects = {kind: dict(by_key) for kind, by_key in before.objects.items()}
    web = objects["Listener"]["web"].obj
    routes = [r.model_copy(update={"name": "api2"}) if r.name == "api" else r
              for r in web.routes]  # type: ignore[attr-defined]  # fmt: skip
    objects["Listener"]["web"] = Stored(web.model_copy(update={"routes": tuple(routes)}), 2)
    second = cache.build(resolve(Snapshot(2, objects)), case.keys)["default"]
    assert "web/api2" in second.resources[ENDPOINT]
    assert "web/api" not in second.resources[ENDPOINT]
    assert set(second.resources[ENDPOINT]) == set(second.resources[CLUSTER])


def test_one_listener_that_cannot_be_translated_holds_no_other_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener whose translation raises keeps its last good configuration (or, new, is
    not served) and says so; the others are published as usual (#14)."""
    case = load_case("node-groups")
    cache = SnapshotCache()
    first = cache.build(resolve(case.snapshot()), case.keys)
    good = first["edge"].resources[LISTENER]["edge-web"]

    def breaks_on_edge_web(resolved: Any, usable: Any) -> Any:
        if resolved.listener.name == "edge-web":
            raise ValueError("a bug that only this listener trips")
        return serialized_listener(resolved, usable)

    monkeypatch.setattr("l7.cache.serialized_listener", breaks_on_edge_web)
    changed_web = with_backends(case.snapshot(), "shop/web", "http",
                                [Backend(address="198.18.3.9", port=8080)])  # fmt: skip
    edited = Snapshot(changed_web.revision, {
        **changed_web.objects,
        "Listener": {
            k: Stored(s.obj.model_copy(update={"idle_timeout_s": 61}), s.revision)
            for k, s in changed_web.objects["Listener"].items()
        },
    })  # fmt: skip
    second = cache.build(resolve(edited), case.keys)
    assert second["edge"].resources[LISTENER]["edge-web"] is good  # its last good one
    assert sorted(second["edge"].resources[LISTENER]) == ["edge-owned", "edge-web"]
    assert second["edge"].resources[LISTENER]["edge-owned"].version != (
        first["edge"].resources[LISTENER]["edge-owned"].version
    )  # the others moved on
    (problem,) = second["edge"].problems
    assert "listener 'edge-web': cannot be translated" in problem
    assert "serving its last good configuration" in problem
    fresh = SnapshotCache().build(resolve(edited), case.keys)  # never translated before
    assert "edge-web" not in fresh["edge"].resources[LISTENER]
    assert "not served" in fresh["edge"].problems[0]


@settings(max_examples=150, deadline=None)
@given(resolver_steps)
def test_a_patched_build_equals_a_fresh_one(changes: list[Step]) -> None:
    """#18: the cache patches the groups where listeners changed; after any sequence of
    changes, what it serves equals what a fresh cache builds from the same state."""
    objects = base_objects()
    resolver, cache = Resolver(), SnapshotCache()
    before = cache.build(resolver.update(Snapshot(0, objects), None), {})
    for revision, step in enumerate(changes, start=1):
        objects, key = changed_objects(objects, step, revision)
        snapshot = Snapshot(revision, objects)
        patched = cache.build(resolver.update(snapshot, [(step[0], key)]), {})
        fresh = SnapshotCache().build(resolve(snapshot), {})
        assert patched.keys() == fresh.keys()
        for group, snap in fresh.items():
            assert patched[group].problems == snap.problems
            for type_url in TYPES:
                assert patched[group].versions(type_url) == snap.versions(type_url)
            # The summary from the names written equals the one from comparing everything.
            assert changed(before.get(group), patched[group]) == changed(before.get(group), snap)
        before = patched
