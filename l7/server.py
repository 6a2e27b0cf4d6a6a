"""The xDS server: ADS over gRPC, State of the World and Delta, for a fleet of Envoys.

A watcher thread follows the store (`slb.storage.follow`), resolves and translates each
new desired state (`l7.cache`) and hands the per-group snapshots to the event loop, where
the hub (`l7.ads`) sends every connected Envoy what its session decides. Envoys join a
node group by their xDS node `cluster`; each group gets only its load balancers'
listeners. Each Envoy's programmed revision and last rejection are written to the status
board for cmi and the console. No Celery task stands between the store and this server: it
is the L7 tier's whole pipeline (see slb/pipeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import start_http_server

from l7.ads import AggregatedDiscoveryService, Hub, Stream
from l7.cache import GroupSnapshot, SnapshotCache, changed
from l7.metrics import Metrics
from l7.translate.common import KIND_NAMES, LISTENER
from slb import pki
from slb.config import XdsSettings, host_port
from slb.integrity import AppliedRecord, Guard
from slb.memory import give_back
from slb.model import Certificate
from slb.resolve import DesiredState, Resolver, resolve
from slb.snapshot import Snapshot, namespace_labels
from slb.storage.follow import Follower
from slb.storage.secrets import Keyring, SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store

log = logging.getLogger("openslb.xds")

HOLD_RETRY_S = 1.0
"""How often a server that holds its last good state reads the store again."""


class ServerTls:
    """Mutual TLS for ADS: the server's chain and key, and the CA(s) every Envoy's client
    certificate must chain to. An Envoy without one never gets a stream (nor a config).

    The three files are read again when one of them changes (looked at on every new
    connection), so certificates and the CA rotate without a restart or a dropped stream;
    files that do not load (half-written, a key that is not the certificate's) leave the
    last good ones serving, with a warning.
    """

    def __init__(self, xds: XdsSettings) -> None:
        self.xds = xds
        self.files = pki.RotatingFiles((xds.tls_cert, xds.tls_key, xds.tls_client_ca),
                                       self._load, log)  # fmt: skip

    def credentials(self) -> grpc.ServerCredentials:
        # gRPC asks `changed` before each handshake; None means "no change" (gRPC's docs;
        # its type stub says otherwise).
        return grpc.dynamic_ssl_server_credentials(
            self.files.current,
            self.files.changed,  # type: ignore[arg-type]
            require_client_authentication=True,
        )

    def _load(self) -> grpc.ServerCertificateConfiguration:
        xds = self.xds
        chain, key = pki.load_identity("xds.tls_cert", xds.tls_cert, "xds.tls_key", xds.tls_key)
        client_ca = pki.load_certificates("xds.tls_client_ca", xds.tls_client_ca)
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)


class XdsServer:
    """The ADS server, its watcher thread, its status reporter and its metrics endpoint."""

    def __init__(
        self,
        store: Store,
        bind: str = "127.0.0.1:18000",
        metrics_bind: str = "",
        block_ms: int = 1_000,
        tls: ServerTls | None = None,
        *,
        record: AppliedRecord | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.bind = bind
        self.tls = tls
        self.metrics_bind = metrics_bind
        self.block_ms = block_ms
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.resolver = Resolver()
        self.secrets = SecretStore(store, keyring)
        self.board = StatusBoard(store)
        self.guard = Guard("xds", partial(self.board.alarm, "xds"), serves="L7 listeners")
        self.record = record
        self._recorded: set[str] = set()
        """The L7 listeners served when the record was written (before a restart)."""
        if record is not None:
            self.guard.applied, self._recorded = record.load()
        self.hub = Hub(self.metrics, self._queue_report, self._queue_forget,
                       verify_members=tls is not None)  # fmt: skip
        self.port = 0
        self._keys: dict[str, str] = {}
        self._missing_keys: set[str] = set()
        self._published: dict[str, GroupSnapshot] = {}
        self._stop = threading.Event()
        self._reports: dict[str, tuple[str, int, str | None, int | None] | None] = {}
        """Node -> its status to write, or None to forget it (it disconnected)."""
        self._report_ready: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: threading.Thread | None = None
        self._metrics_server: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        metrics_address = (  # a bad setting fails before anything listens
            host_port(self.metrics_bind, "xds.metrics_bind") if self.metrics_bind else None
        )
        self._loop = asyncio.get_running_loop()
        self._report_ready = asyncio.Event()
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.max_receive_message_length", 16 << 20),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscoveryService(self.hub), server
        )
        if self.tls is None:
            self.port = server.add_insecure_port(self.bind)
        else:
            self.port = server.add_secure_port(self.bind, self.tls.credentials())
        if not self.port:
            raise OSError(f"xds: cannot listen on {self.bind}")
        await server.start()
        self._server = server
        if metrics_address is not None:
            host, port = metrics_address
            self._metrics_server, _ = start_http_server(
                port, addr=host, registry=self.metrics.registry
            )
        self._tasks.append(asyncio.create_task(self._reporter()))
        self._watcher = threading.Thread(target=self._watch, name="xds-watch", daemon=True)
        self._watcher.start()
        # The bind as given (IPv6 keeps its brackets), and the port bound: ":0" asks for any.
        log.info("xds: serving ADS on %s (port %d, %s)", self.bind, self.port,
                 "mutual TLS" if self.tls else "plaintext")  # fmt: skip

    async def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self.hub.stopping = True
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await self._flush_reports()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 30)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

    async def serve(self, stopped: asyncio.Event) -> None:
        await self.start()
        try:
            await stopped.wait()
        finally:
            await self.stop()

    # -- the desired state ------------------------------------------------------------------

    def _watch(self) -> None:
        """Thread: follow the store, translate, hand snapshots to the loop; never dies."""
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:
                log.exception("xds: following the store failed; starting over in 1 s")
                self._stop.wait(1)

    def _follow(self) -> None:
        """Publish the desired state now and after every batch of changes (and when a
        quiet moment finds a missing key stored). Starting over: from a fresh snapshot.

        A store that cannot be trusted (`slb.integrity`) is not published: Envoys keep what
        they were last given, and the store is read afresh every `HOLD_RETRY_S`."""
        follower = Follower(self.store)
        for step in follower.follow(self._stop, block_ms=self.block_ms):
            if not self.guard.admit(step.snapshot, partial(self._removal, step.snapshot)):
                self.metrics.store_held.set(1)
                if step.snapshot.store_id is None and self.guard.applied is None:
                    assert self._loop is not None  # Envoys that hold nothing: ready, empty
                    self._loop.call_soon_threadsafe(self.hub.publish_blank)
                follower.reset()
                self._stop.wait(HOLD_RETRY_S)
                continue
            self.metrics.store_held.set(0)
            fetched = step.quiet and self._fetch_missing_keys()
            touched = (
                None if step.changes is None
                else [(kind, key) for change in step.changes for _, kind, key in change.ops]
            )  # fmt: skip
            if (not step.quiet or fetched) and self._publish(step.snapshot, touched):
                if touched is None:  # a cold read: its temporaries are garbage now
                    give_back()
                self.guard.applied_now(step.snapshot)
                if self.record is not None:
                    self.record.save(self.guard.applied, self._served())

    def _removal(self, snapshot: Snapshot) -> tuple[int, int]:
        """How many L7 listeners Envoys are given (before a restart: were), and how many
        `snapshot` would keep."""
        served = len(self._served()) if self._published else len(self._recorded)
        kept = sum(1 for r in resolve(snapshot).listeners if r.listener.protocol.is_l7)
        return served, kept

    def _served(self) -> set[str]:
        """The L7 listeners Envoys are given, as GROUP/NAME."""
        return {f"{group}/{name}" for group, snap in self._published.items()
                for name in snap.resources[LISTENER]}  # fmt: skip

    def _publish(self, snapshot: Snapshot, touched: list[tuple[str, str]] | None = None) -> bool:
        """Translate and hand over `snapshot`, which is the last one moved past `touched`
        (None: anything may have changed); False if it cannot be translated."""
        started = time.perf_counter()
        try:
            with gc_paused():
                state = self.resolver.update(snapshot, touched)
                keys = self._keys_for(state)
                groups = self.cache.build(state, keys, namespace_labels(snapshot))
        except Exception:
            log.exception("xds: cannot translate revision %d; serving the last good one",
                          snapshot.revision)  # fmt: skip
            self.resolver = Resolver()  # resolve it all next time
            return False
        elapsed = time.perf_counter() - started
        self.metrics.translate_seconds.observe(elapsed)
        problems = sorted({p for g in groups.values() for p in g.problems})
        self.metrics.problems.set(len(problems))
        for problem in problems:
            log.warning("xds: revision %d: %s", snapshot.revision, problem)
        previous, self._published = self._published, groups
        for group, snap in groups.items():
            summary = changed(previous.get(group), snap)
            if summary:
                log.info(
                    "xds: revision %d group %s: %s (%.1f ms)", snapshot.revision, group,
                    ", ".join(f"{KIND_NAMES[t]} +{u} -{r}" for t, (u, r) in summary.items()),
                    elapsed * 1000,
                )  # fmt: skip
        assert self._loop is not None
        members = {name: frozenset(n.name for n in group.nodes)
                   for name, group in state.node_groups.items()}  # fmt: skip
        self._loop.call_soon_threadsafe(self.hub.publish, snapshot.revision, groups, members)
        return True

    def _keys_for(self, state: DesiredState) -> dict[str, str]:
        """The keys the certificates in use name; refs are immutable, so each is read once,
        and a key no certificate in use names any more (a renewal's old one) is let go."""
        refs = {c.key_ref for c in _used_certificates(state)}
        for gone in set(self._keys) - refs:
            del self._keys[gone]
        missing = refs - set(self._keys)
        if missing:
            self._keys.update(self.secrets.get_keys(missing))
        self._missing_keys = refs - set(self._keys)
        self.metrics.private_keys.set(len(self._keys))
        return dict(self._keys)

    def _fetch_missing_keys(self) -> bool:
        """Whether a key missing at the last translation has been stored since."""
        if not self._missing_keys:
            return False
        found = self.secrets.get_keys(self._missing_keys)
        self._keys.update(found)
        self._missing_keys -= set(found)
        self.metrics.private_keys.set(len(self._keys))
        return bool(found)

    # -- status -----------------------------------------------------------------------------

    def _queue_report(self, stream: Stream) -> None:
        session = stream.session
        assert stream.reported is not None
        revision, error, error_revision = stream.reported
        self._reports[session.node_id] = (session.group, revision, error, error_revision)
        assert self._report_ready is not None
        self._report_ready.set()

    def _queue_forget(self, node_id: str) -> None:
        self._reports[node_id] = None
        assert self._report_ready is not None
        self._report_ready.set()

    async def _reporter(self) -> None:
        """Write status reports in order, coalescing bursts per Envoy."""
        assert self._report_ready is not None
        while True:
            await self._report_ready.wait()
            self._report_ready.clear()
            await self._flush_reports()

    async def _flush_reports(self) -> None:
        reports, self._reports = self._reports, {}
        if reports:
            try:
                await asyncio.to_thread(self._write_reports, reports)
            except Exception:  # reporting must not stop serving: keep them for the next try
                log.exception("xds: cannot write status reports; will retry")
                self._reports = {**reports, **self._reports}
                await asyncio.sleep(1)
                assert self._report_ready is not None
                self._report_ready.set()

    def _write_reports(
        self, reports: dict[str, tuple[str, int, str | None, int | None] | None]
    ) -> None:
        for node, report in reports.items():
            if report is None:
                self.board.forget("l7", node)
                continue
            group, revision, error, error_revision = report
            self.board.report(
                "l7", node, group, revision, error=error, error_revision=error_revision
            )


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while translating.

    Translation allocates many short-lived objects (freed by reference counting) while
    the desired state holds hundreds of thousands of long-lived ones; each full
    collection walks all of them, which tripled the time to translate 10,000 Services.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _used_certificates(state: DesiredState) -> list[Certificate]:
    return [
        state.certificates[name]
        for r in state.listeners
        for name in r.listener.certificates
        if name in state.certificates
    ]
