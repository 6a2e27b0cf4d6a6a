"""The xDS server in-process with real Redis and clients that speak ADS like Envoy."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devbed.adsclient import AdsClient
from devbed.l7harness import listener, load_balancer, service
from devbed.pki import self_signed
from devbed.process import wait_until
from devbed.redis import backup, lose, restore
from l7.server import XdsServer
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER
from slb.integrity import AppliedRecord
from slb.model import Certificate
from slb.snapshot import Delete, Put
from slb.storage.secrets import SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store


class ServerThread:
    """An XdsServer on its own event loop in a thread, on a free loopback port."""

    def __init__(self, store: Store, record: AppliedRecord | None = None) -> None:
        self.server = XdsServer(store, bind="127.0.0.1:0", block_ms=100, record=record)
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self.server.start()
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop(grace=0.1)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the server did not stop"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def wait_revision(self, revision: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.server.hub.revision < revision:
            assert time.monotonic() < deadline, "the server never published the revision"
            time.sleep(0.01)


@pytest.fixture
def server(store: Store) -> Iterator[ServerThread]:
    with ServerThread(store) as running:
        yield running


def world(store: Store) -> int:
    return store.apply([
        Put(load_balancer("a", "198.18.0.1", group="blue")),
        Put(load_balancer("b", "198.18.0.2", group="green")),
        Put(service("svc-a", [("198.18.1.1", 80)], lb="a")),
        Put(service("svc-b", [("198.18.1.2", 80)], lb="b")),
        Put(listener("web-a", "HTTP", 80, lb="a", app="svc-a")),
        Put(listener("web-b", "HTTP", 80, lb="b", app="svc-b")),
    ])  # fmt: skip


def names(response: Any) -> list[str]:
    return sorted(r.name for r in response.resources)


def test_each_node_group_gets_only_its_own_listeners(store: Store, server: ServerThread) -> None:
    server.wait_revision(world(store))
    blue = AdsClient(server.target, "n-blue", "blue")
    green = AdsClient(server.target, "n-green", "green")
    lonely = AdsClient(server.target, "n-none", "nobody")
    try:
        for client in (blue, green, lonely):
            client.subscribe(CLUSTER)
        assert names(blue.receive()) == ["web-a"]
        assert names(green.receive()) == ["web-b"]
        assert names(lonely.receive()) == []
    finally:
        for client in (blue, green, lonely):
            client.close()


def test_a_node_must_say_who_it_is(store: Store, server: ServerThread) -> None:
    client = AdsClient(server.target, "n1", "")
    try:
        client.subscribe(CLUSTER)
        with pytest.raises(AssertionError, match=r"node\.cluster"):
            client.receive()
        assert client.error is not None
        assert client.error.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        client.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
def test_a_nack_is_counted_reported_and_not_answered_with_a_resend(
    store: Store, server: ServerThread, delta: bool
) -> None:
    revision = world(store)
    server.wait_revision(revision)
    client = AdsClient(server.target, "n1", "blue", delta=delta)
    try:
        client.subscribe(CLUSTER)
        response = client.receive()
        client.ack(response, nack="pretend the cluster is bad")
        board = StatusBoard(store)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "n1" not in board.all("l7"):
            time.sleep(0.01)
        status = board.all("l7")["n1"]
        assert status.error == "Cluster: pretend the cluster is bad"
        assert status.error_revision == revision
        assert status.group == "blue"
        registry = server.server.metrics.registry
        labels = {"group": "blue", "type": "clusters"}
        assert registry.get_sample_value("openslb_xds_nacks_total", labels) == 1
        with pytest.raises(queue.Empty):
            client.receive(timeout=1)  # nothing is re-sent
    finally:
        client.close()


def test_one_change_reaches_every_connected_client(store: Store, server: ServerThread) -> None:
    server.wait_revision(world(store))
    clients = [AdsClient(server.target, f"n{i}", "blue") for i in range(20)]
    try:
        for client in clients:
            client.subscribe(CLUSTER)
            client.subscribe(LISTENER)
        for client in clients:
            cds = client.receive()
            client.subscribe(ENDPOINT, ["web-a"])
            eds = client.receive()
            client.ack(eds)
            client.ack(cds)
            client.ack(client.receive())  # listeners
        revision = store.put(service("svc-a", [("198.18.1.1", 80), ("198.18.1.3", 80)], lb="a"))
        for client in clients:
            response = client.receive()
            assert response.type_url == ENDPOINT
            assert names(response) == ["web-a"]
            assert response.system_version_info == str(revision)
            client.ack(response)
        board = StatusBoard(store)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            statuses = board.all("l7")
            if all(statuses.get(f"n{i}") and statuses[f"n{i}"].revision == revision
                   for i in range(20)):  # fmt: skip
                break
            time.sleep(0.02)
        assert {s.revision for s in board.all("l7").values()} == {revision}
    finally:
        for client in clients:
            client.close()


def test_a_key_stored_after_its_certificate_is_picked_up(
    store: Store, server: ServerThread
) -> None:
    pair = self_signed("late.shop.test")
    revision = store.apply([
        Put(load_balancer("a", "198.18.0.1", group="blue")),
        Put(service("svc-a", [("198.18.1.1", 80)], lb="a")),
        Put(Certificate(name="late", chain_pem=pair.chain_pem, key_ref="late-1")),
        Put(listener("tls", "HTTPS", 443, lb="a", app="svc-a", certificates=["late"])),
    ])  # fmt: skip
    server.wait_revision(revision)
    assert server.server.metrics.registry.get_sample_value("openslb_xds_problems") == 2
    client = AdsClient(server.target, "n1", "blue")
    try:
        client.subscribe(CLUSTER)
        first = client.receive()
        assert names(first) == []  # an HTTPS listener without its key: not served
        client.ack(first)
        SecretStore(store).put_key("late-1", pair.key_pem)  # no store revision for keys
        cds = client.receive(timeout=10)
        assert names(cds) == ["tls"]
    finally:
        client.close()


def test_a_renewed_certificates_old_private_key_is_let_go(
    store: Store, server: ServerThread
) -> None:
    """A renewal (cert-manager's, every few weeks) names a new key: the server holds only
    the keys of the certificates in use, not every key it ever read."""
    first, renewed = self_signed("shop.test"), self_signed("shop.test")
    SecretStore(store).put_key("shop-1", first.key_pem)
    SecretStore(store).put_key("shop-2", renewed.key_pem)
    revision = store.apply([
        Put(load_balancer("a", "198.18.0.1", group="blue")),
        Put(service("svc-a", [("198.18.1.1", 80)], lb="a")),
        Put(Certificate(name="shop", chain_pem=first.chain_pem, key_ref="shop-1")),
        Put(listener("tls", "HTTPS", 443, lb="a", app="svc-a", certificates=["shop"])),
    ])  # fmt: skip
    server.wait_revision(revision)
    held = server.server.metrics.registry.get_sample_value
    assert held("openslb_xds_private_keys") == 1
    renewal = store.put(Certificate(name="shop", chain_pem=renewed.chain_pem, key_ref="shop-2"))
    server.wait_revision(renewal)
    assert held("openslb_xds_private_keys") == 1  # shop-2's alone
    removal = store.apply([Delete("Listener", "tls")])
    server.wait_revision(removal)
    assert held("openslb_xds_private_keys") == 0


def test_an_envoy_that_disconnects_leaves_the_status_board(
    store: Store, server: ServerThread
) -> None:
    server.wait_revision(world(store))
    board = StatusBoard(store)
    client = AdsClient(server.target, "n-gone", "blue")
    client.subscribe(CLUSTER)
    client.subscribe(LISTENER)
    cds = client.receive()
    client.subscribe(ENDPOINT, ["web-a"])
    client.ack(client.receive())
    client.ack(cds)
    client.ack(client.receive())  # listeners
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "n-gone" not in board.all("l7"):
        time.sleep(0.02)
    assert "n-gone" in board.all("l7")
    client.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "n-gone" in board.all("l7"):
        time.sleep(0.02)
    assert "n-gone" not in board.all("l7")  # cmi no longer waits for it


def test_a_lost_store_is_not_served_until_cmi_has_rebuilt_it(
    store: Store, server: ServerThread
) -> None:
    """Redis lost its data: Envoys keep the last good configuration, connected or new,
    through cmi's rebuild; the rebuilt store is served once cmi marks it synced."""
    served = world(store)
    server.wait_revision(served)
    held = server.server.metrics.registry
    client = AdsClient(server.target, "n-blue", "blue")
    try:
        client.subscribe(LISTENER)
        first = client.receive()
        assert names(first) == ["web-a"]
        client.ack(first)
        assert lose(store)  # Redis lost its data
        wait_until(lambda: server.server.guard.alarm is not None, 10, "the alarm")
        assert str(server.server.guard.alarm).startswith("the store is empty")
        assert held.get_sample_value("openslb_xds_store_held") == 1
        board = StatusBoard(store)  # for the console's banner
        wait_until(lambda: "xds" in board.alarms(), 10, "the alarm on the board")
        identity = store.identity()  # cmi begins the rebuild: half of it written so far
        store.mark_syncing(identity)
        store.apply([Put(load_balancer("b", "198.18.0.2", group="green")),
                     Put(service("svc-b", [("198.18.1.2", 80)], lb="b"))])  # fmt: skip
        with pytest.raises(queue.Empty):
            client.receive(timeout=1.5)  # no empty configuration
        assert server.server.hub.revision == served
        late = AdsClient(server.target, "n-late", "blue")
        try:
            late.subscribe(LISTENER)
            assert names(late.receive()) == ["web-a"]  # a new Envoy: the last good one too
        finally:
            late.close()
        world(store)
        rebuilt = store.put(listener("web-a2", "HTTP", 81, lb="a", app="svc-a"))
        assert store.mark_synced(identity, rebuilt) is not None
        response = client.receive(timeout=10)  # delta: what the rebuilt store adds
        assert (names(response), list(response.removed_resources)) == (["web-a2"], [])
        assert response.system_version_info == str(rebuilt)
        assert server.server.guard.alarm is None
        assert held.get_sample_value("openslb_xds_store_held") == 0
        assert "xds" not in board.alarms()
    finally:
        client.close()


def test_a_rebuilt_store_without_the_operators_listeners_waits_for_an_operator(
    store: Store, server: ServerThread
) -> None:
    """cmi rebuilt the store, but the listeners operators made were lost with it: the
    Envoys keep them until an operator restores them or adopts the store."""
    server.wait_revision(world(store))
    client = AdsClient(server.target, "n-blue", "blue")
    try:
        client.subscribe(LISTENER)
        client.ack(client.receive())
        assert lose(store)
        wait_until(lambda: server.server.guard.alarm is not None, 10, "the alarm")
        identity = store.identity()  # cmi's rebuild: its instances and Services, no listener
        store.apply([Put(load_balancer("a", "198.18.0.1", group="blue")),
                     Put(service("svc-a", [("198.18.1.1", 80)], lb="a"))])  # fmt: skip
        assert store.mark_synced(identity, store.revision()) is not None
        wait_until(lambda: "would take" in str(server.server.guard.alarm), 10, "held")
        assert "would take 2 of the 2 L7 listeners" in str(server.server.guard.alarm)
        with pytest.raises(queue.Empty):
            client.receive(timeout=1.5)  # web-a is still served
        assert store.mark_synced(identity, store.revision(), adopted=True) is not None
        response = client.receive(timeout=10)  # adopted: the store as it is
        assert list(response.removed_resources) == ["web-a"]
        assert server.server.guard.alarm is None
    finally:
        client.close()


def test_a_restarted_server_remembers_what_it_served(store: Store, tmp_path: Path) -> None:
    """Redis restored from an older copy while the xDS server was down: the restarted server
    reads what it served from its own disk and holds the older store off, so the Envoys keep
    the listener added since the copy was taken; cmi's rebuild is served once it is marked."""
    record = AppliedRecord(tmp_path / "xds.applied.json")
    identity = store.identity()
    assert store.mark_synced(identity, world(store)) is not None
    copy = backup(store)  # before the operator adds web-a2
    newer = store.put(listener("web-a2", "HTTP", 81, lb="a", app="svc-a"))
    with ServerThread(store, record) as first:
        first.wait_revision(newer)
        wait_until(lambda: record.load()[0] is not None, 5, "the record")
    restore(store, copy)
    assert store.revision() < newer
    with ServerThread(store, record) as restarted:
        client = AdsClient(restarted.target, "n-blue", "blue", delta=True)
        try:
            client.subscribe(LISTENER, holding={"web-a": str(newer), "web-a2": str(newer)})
            wait_until(lambda: restarted.server.guard.alarm is not None, 10, "the alarm")
            assert "went back to revision" in str(restarted.server.guard.alarm)
            with pytest.raises(queue.Empty):
                client.receive(timeout=1.5)  # web-a2 is not taken away
            assert restarted.server.hub.revision == -1  # nothing published
            store.mark_syncing(identity)  # cmi rebuilds the store from Kubernetes
            rebuilt = store.put(listener("web-a3", "HTTP", 82, lb="a", app="svc-a"))
            assert store.mark_synced(identity, rebuilt) is not None
            restarted.wait_revision(rebuilt)
            assert restarted.server.guard.alarm is None
        finally:
            client.close()
    assert sorted(record.load()[1]) == ["blue/web-a", "blue/web-a3", "green/web-b"]


@pytest.mark.parametrize("delta", [True, False])
def test_an_empty_store_gives_only_envoys_that_hold_nothing_an_empty_configuration(
    store: Store, server: ServerThread, delta: bool
) -> None:
    """A store nothing wrote yet: a new Envoy gets the empty configuration and gets ready; one
    that reconnects with configuration (the store was emptied, the server restarted) keeps it."""
    new = AdsClient(server.target, "n-new", "blue", delta=delta)
    old = AdsClient(server.target, "n-old", "blue", delta=delta)
    try:
        new.subscribe(LISTENER)
        blank = new.receive()
        assert list(blank.resources) == []
        new.ack(blank)
        old.subscribe(LISTENER, holding={"web-a": "41"})
        with pytest.raises(queue.Empty):
            old.receive(timeout=1.5)
        assert server.server.guard.alarm is not None
        revision = world(store)  # the store's first write: served to both
        assert len(old.receive().resources) == 1  # web-a (SotW sends it unnamed: count it)
        assert len(new.receive().resources) == 1
        assert server.server.hub.revision == revision
    finally:
        new.close()
        old.close()
