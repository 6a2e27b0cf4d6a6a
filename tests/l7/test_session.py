"""The ADS session logic on its own: ordering, nonces, ACK/NACK, and what is (not) sent."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given, settings

from l7.cache import GroupSnapshot, Resource, SnapshotCache
from l7.session import Session
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPES
from slb.resolve import Resolver
from slb.snapshot import Snapshot
from tests.slb.test_resolver import Step, base_objects, changed_objects
from tests.slb.test_resolver import steps as resolver_steps

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}


def snapshot(revision: int, **kinds: dict[str, str]) -> GroupSnapshot:
    """A snapshot from {"CDS": {name: content}, ...}; content stands for the resource."""
    by_type: dict[str, dict[str, Resource]] = {t: {} for t in TYPES}
    long = {v: k for k, v in SHORT.items()}
    for kind, resources in kinds.items():
        for name, content in resources.items():
            by_type[long[kind]][name] = Resource(name, long[kind], content.encode())
    return GroupSnapshot("g", revision, by_type)


def sotw(type_url: str, names: list[str] | None = None, nonce: str = "", nack: str = "") -> Any:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names or [], response_nonce=nonce
    )
    if nack:
        request.error_detail.CopyFrom(status_pb2.Status(code=13, message=nack))
    return request


def delta(
    type_url: str,
    subscribe: list[str] | None = None,
    *,
    unsubscribe: list[str] | None = None,
    nonce: str = "",
    initial: dict[str, str] | None = None,
    nack: str = "",
) -> Any:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=subscribe or [],
        resource_names_unsubscribe=unsubscribe or [],
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if nack:
        request.error_detail.CopyFrom(status_pb2.Status(code=13, message=nack))
    return request


def sent(responses: list[Any]) -> list[tuple[str, list[str]]]:
    """(kind, names) of each response: SotW resources by content, Delta by name (-removed)."""
    out = []
    for r in responses:
        if isinstance(r, discovery_pb2.DeltaDiscoveryResponse):
            names = [x.name for x in r.resources] + [f"-{n}" for n in r.removed_resources]
        else:
            names = [x.value.decode() for x in r.resources]
        out.append((SHORT[r.type_url], names))
    return out


WORLD = {
    "CDS": {"web": "web-cluster"},
    "EDS": {"web": "web-endpoints"},
    "LDS": {"web": "web-listener"},
    "RDS": {"web": "web-routes"},
}


def test_sotw_initial_sync_goes_clusters_endpoints_listeners_routes() -> None:
    s = Session("n1", "g", delta=False)
    assert s.on_snapshot(snapshot(1, **WORLD)) == []  # nothing asked for yet
    out = s.on_request(sotw(CLUSTER)) + s.on_request(sotw(LISTENER))
    assert sent(out) == [("CDS", ["web-cluster"])]  # listeners wait for warm clusters
    cds_nonce = out[0].nonce
    assert out[0].version_info == "1"
    # Envoy asks for the new cluster's endpoints before it ACKs the cluster.
    out = s.on_request(sotw(ENDPOINT, ["web"]))
    assert sent(out) == [("EDS", ["web-endpoints"])]
    eds_nonce = out[0].nonce
    assert s.on_request(sotw(ENDPOINT, ["web"], nonce=eds_nonce)) == []
    out = s.on_request(sotw(CLUSTER, nonce=cds_nonce))
    assert sent(out) == [("LDS", ["web-listener"])]
    assert not s.synced
    out = s.on_request(sotw(ROUTE, ["web"]))
    assert sent(out) == [("RDS", ["web-routes"])]
    s.on_request(sotw(ROUTE, ["web"], nonce=out[0].nonce))
    s.on_request(sotw(LISTENER, nonce="3"))
    assert s.synced
    assert [a.error for a in s.acks] == [None] * 4
    assert cds_nonce != eds_nonce


def synced_session(delta_mode: bool, world: dict[str, dict[str, str]]) -> Session:
    """A session brought to `world` at revision 1, every response ACKed."""
    s = Session("n1", "g", delta=delta_mode)
    s.on_snapshot(snapshot(1, **world))
    pending = []
    for type_url in (CLUSTER, LISTENER):
        pending += s.on_request(delta(type_url) if delta_mode else sotw(type_url))
    for _ in range(20):
        if not pending:
            break
        response = pending.pop(0)
        type_url = response.type_url
        if type_url == CLUSTER:
            names = list(world.get("CDS", {}))
            pending += s.on_request(delta(ENDPOINT, names) if delta_mode else sotw(ENDPOINT, names))
        if type_url == LISTENER:
            names = list(world.get("RDS", {}))
            pending += s.on_request(delta(ROUTE, names) if delta_mode else sotw(ROUTE, names))
        ack_names = sorted(s.types[type_url].names)
        ack = (
            delta(type_url, nonce=response.nonce)
            if delta_mode
            else sotw(type_url, ack_names, nonce=response.nonce)
        )
        pending += s.on_request(ack)
    assert s.synced
    s.acks.clear()
    return s


def ack(s: Session, response: Any) -> list[Any]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return s.on_request(delta(response.type_url, nonce=response.nonce))
    names = sorted(s.types[response.type_url].names)
    return s.on_request(sotw(response.type_url, names, nonce=response.nonce))


def test_an_endpoint_change_sends_endpoints_only() -> None:
    for mode in (False, True):
        s = synced_session(mode, WORLD)
        out = s.on_snapshot(snapshot(2, **{**WORLD, "EDS": {"web": "web-endpoints-2"}}))
        assert sent(out) == [("EDS", ["web" if mode else "web-endpoints-2"])]
        assert ack(s, out[0]) == []
        assert s.synced


def test_a_rejected_response_is_recorded_and_not_sent_again() -> None:
    s = synced_session(False, WORLD)
    out = s.on_snapshot(snapshot(2, **{**WORLD, "RDS": {"web": "bad-routes"}}))
    assert sent(out) == [("RDS", ["bad-routes"])]
    assert s.on_request(sotw(ROUTE, ["web"], nonce=out[0].nonce, nack="bad regex")) == []
    assert s.error == "RouteConfiguration: bad regex"
    assert [(a.revision, a.error) for a in s.acks] == [(2, "bad regex")]
    # The same content again (a new revision that changes something else) is not re-sent.
    out = s.on_snapshot(snapshot(3, **{**WORLD, "RDS": {"web": "bad-routes"}}))
    assert out == []
    assert s.synced
    # A fixed version goes out, and its ACK clears the error.
    out = s.on_snapshot(snapshot(4, **{**WORLD, "RDS": {"web": "good-routes"}}))
    assert sent(out) == [("RDS", ["good-routes"])]
    ack(s, out[0])
    assert s.error is None


def test_stale_nonces_are_ignored_in_sotw() -> None:
    s = synced_session(False, WORLD)
    out = s.on_snapshot(snapshot(2, **{**WORLD, "EDS": {"web": "e2"}}))
    # A request carrying an older nonce is neither an ACK nor a subscription change.
    assert s.on_request(sotw(ENDPOINT, ["web", "other"], nonce="1")) == []
    assert s.types[ENDPOINT].inflight is not None
    assert s.types[ENDPOINT].names == {"web"}
    ack(s, out[0])
    assert s.types[ENDPOINT].inflight is None


def test_a_replaced_cluster_is_removed_only_after_routes_moved_off_it() -> None:
    for mode in (False, True):
        s = synced_session(mode, WORLD)
        moved = {
            "CDS": {"web-v2": "web-v2-cluster"},
            "EDS": {"web-v2": "web-v2-endpoints"},
            "LDS": WORLD["LDS"],
            "RDS": {"web": "web-routes-to-v2"},
        }
        out = s.on_snapshot(snapshot(2, **moved))
        # SotW keeps the old cluster in the set; Delta just adds.
        assert sent(out) == [("CDS", ["web-v2"] if mode else ["web-cluster", "web-v2-cluster"])]
        cds = out[0]
        out = s.on_request(
            delta(ENDPOINT, ["web-v2"]) if mode else sotw(ENDPOINT, ["web", "web-v2"])
        )
        assert sent(out) == [("EDS", ["web-v2" if mode else "web-v2-endpoints"])]
        assert ack(s, out[0]) == []  # routes still wait for the clusters' ACK
        out = ack(s, cds)
        assert sent(out) == [("RDS", ["web" if mode else "web-routes-to-v2"])]
        out = ack(s, out[0])
        assert sent(out) == [("CDS", ["-web"] if mode else ["web-v2-cluster"])]
        # Envoy drops the removed cluster's endpoints before it ACKs the removal.
        s.on_request(delta(ENDPOINT, unsubscribe=["web"]) if mode else sotw(ENDPOINT, ["web-v2"]))
        assert ack(s, out[0]) == []
        assert s.synced


def test_delta_reconnect_sends_only_what_envoy_does_not_hold() -> None:
    world = snapshot(5, **WORLD)
    versions = {t: world.versions(t) for t in TYPES}
    s = Session("n1", "g", delta=True)
    s.on_snapshot(world)
    out = s.on_request(delta(CLUSTER, initial=versions[CLUSTER]))
    # Nothing changed, but the first response of a type always goes out (empty).
    assert sent(out) == [("CDS", [])]
    cds = out[0]
    out = s.on_request(delta(ENDPOINT, ["web"], initial={"web": "stale"}))
    assert sent(out) == [("EDS", ["web"])]  # Envoy's copy is out of date
    assert ack(s, out[0]) == []
    out = ack(s, cds) + s.on_request(delta(LISTENER, initial=versions[LISTENER]))
    assert sent(out) == [("LDS", [])]
    ack(s, out[0])
    out = s.on_request(delta(ROUTE, ["web"], initial=versions[ROUTE]))
    assert out == []  # up to date: nothing to send for a by-name type
    assert s.synced


def test_delta_removes_a_subscribed_resource_that_is_gone() -> None:
    s = synced_session(True, {**WORLD, "SDS": {}})
    s.on_request(delta(SECRET, ["cert"]))
    out = s.on_snapshot(snapshot(2, **{**WORLD, "SDS": {"cert": "pem"}}))
    assert sent(out) == [("SDS", ["cert"])]
    ack(s, out[0])
    out = s.on_snapshot(snapshot(3, **WORLD))
    assert sent(out) == [("SDS", ["-cert"])]


class FakeEnvoy:
    """A Delta client that ACKs every response and subscribes to the endpoints of the
    clusters and the routes of the listeners it holds, as Envoy does."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.log: list[tuple[str, list[str], list[str]]] = []

    def run(self, pending: list[Any]) -> None:
        for _ in range(200):  # bounded: a change takes a handful of responses
            if not pending:
                return
            response = pending.pop(0)
            self.log.append((SHORT[response.type_url], sorted(r.name for r in response.resources),
                             sorted(response.removed_resources)))  # fmt: skip
            held = {r.name for r in response.resources}
            if response.type_url in (CLUSTER, LISTENER):
                by_name = ENDPOINT if response.type_url == CLUSTER else ROUTE
                new = sorted(held - self.session.types[by_name].names)
                if new:
                    pending += self.session.on_request(delta(by_name, new))
            pending += self.session.on_request(delta(response.type_url, nonce=response.nonce))
        raise AssertionError("no end to the responses")


@settings(max_examples=100, deadline=None)
@given(resolver_steps)
def test_a_session_compares_only_what_a_following_snapshot_touched(changes: list[Step]) -> None:
    """#18: once Envoy holds the target, a snapshot that follows it is compared on the
    names it touched only; what the session sends is what comparing everything sends."""
    objects = base_objects()
    resolver, cache = Resolver(), SnapshotCache()
    scoped, full = Session("n1", "g", delta=True), Session("n2", "g", delta=True)
    envoys = FakeEnvoy(scoped), FakeEnvoy(full)
    built = cache.build(resolver.update(Snapshot(0, objects), None), {})
    first = built.get("a") or GroupSnapshot.empty("a", 0)
    for envoy in envoys:
        envoy.session.on_snapshot(first)
        envoy.run([*envoy.session.on_request(delta(CLUSTER)),
                   *envoy.session.on_request(delta(LISTENER))])  # fmt: skip
    for revision, step in enumerate(changes, start=1):
        objects, key = changed_objects(objects, step, revision)
        snap = cache.build(resolver.update(Snapshot(revision, objects), [(step[0], key)]), {})
        target = snap.get("a") or GroupSnapshot.empty("a", revision)
        envoys[0].run(scoped.on_snapshot(target))
        envoys[1].run(full.on_snapshot(replace(target, since=None)))
        assert envoys[0].log == envoys[1].log
        assert scoped.synced
        assert full.synced
        assert scoped.types[LISTENER].sent == target.versions(LISTENER)
        assert scoped.types[CLUSTER].sent == target.versions(CLUSTER)
