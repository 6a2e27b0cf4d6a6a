"""The xDS server: ADS over gRPC, State of the World and Delta, for a fleet of Envoys.

A watcher thread follows the store (`l7.feed`), resolves and translates each new desired
state (`l7.cache`) and hands the per-group snapshots to the event loop, where every
connected Envoy's session (`l7.session`) decides what to send. Envoys join a node group
by their xDS node `cluster`; each group gets only its load balancers' listeners. Every
ACK and NACK is counted, and each Envoy's programmed revision and last rejection are
written to the status board for cmi and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import start_http_server

from l7.cache import GroupSnapshot, SnapshotCache, changed
from l7.feed import follow, record_published
from l7.metrics import Metrics
from l7.session import Request, Response, Session
from l7.translate.common import KIND_NAMES
from slb import pki
from slb.config import XdsSettings
from slb.model import Certificate
from slb.resolve import DesiredState, resolve
from slb.snapshot import Snapshot
from slb.storage.secrets import SecretStore
from slb.storage.status import StatusBoard
from slb.storage.store import Store

log = logging.getLogger("openslb.xds")

_END = object()


@dataclass(eq=False)
class Stream:
    """One connected Envoy: its session and the responses waiting to be sent."""

    session: Session
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    reported: tuple[int, str | None, int | None] | None = None
    good_revision: int = 0
    error_revision: int | None = None

    def send(self, responses: list[Response]) -> None:
        for response in responses:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("xds: %s -> %s", self.session.node_id, _describe_response(response))
            self.queue.put_nowait(response)


class Hub:
    """The latest snapshot of every node group and the streams that serve it (loop-bound)."""

    def __init__(
        self,
        metrics: Metrics,
        report: Callable[[Stream], None],
        gone: Callable[[str], None],
        *,
        verify_members: bool = False,
    ) -> None:
        self.metrics = metrics
        self.report = report
        self.gone = gone
        self.stopping = False
        """Set while the server shuts down: its Envoys go on serving, so they stay listed."""
        self.revision = -1
        self.latest: dict[str, GroupSnapshot] = {}
        self.streams: dict[str, set[Stream]] = {}
        self.members: dict[str, frozenset[str]] = {}
        """Node group -> the names of its LB nodes, as of the latest publish."""
        self.verify_members = verify_members
        """Under mutual TLS: only a node of the group gets the group's configuration."""

    def snapshot_for(self, group: str) -> GroupSnapshot | None:
        if self.revision < 0:
            return None
        return self.latest.get(group) or GroupSnapshot.empty(group, self.revision)

    def attach(self, stream: Stream) -> None:
        session = stream.session
        self.streams.setdefault(session.group, set()).add(stream)
        self.metrics.streams.labels(session.group, _mode(session)).inc()
        snapshot = self.snapshot_for(session.group)
        if snapshot is not None:
            stream.send(session.on_snapshot(snapshot))

    def detach(self, stream: Stream) -> None:
        """An Envoy went away: unless it is already back on another stream, its status goes,
        so that cmi does not wait for an Envoy that no longer serves anything."""
        session = stream.session
        self.streams.get(session.group, set()).discard(stream)
        self.metrics.streams.labels(session.group, _mode(session)).dec()
        connected = any(
            s.session.node_id == session.node_id for group in self.streams.values() for s in group
        )
        if not connected and not self.stopping:
            self.gone(session.node_id)

    def refusal(self, node_id: str, group: str, names: set[str]) -> Refusal | None:
        """Why a verified Envoy may not have a stream (None: it may). `names` are its client
        certificate's; it must be one of them, and a node of the group it asks for."""
        if node_id not in names:
            shown = ", ".join(sorted(names)) or "none"
            return Refusal("certificate", grpc.StatusCode.PERMISSION_DENIED,
                           f"node.id {node_id!r} is not a name of its client certificate "
                           f"({shown})")  # fmt: skip
        if self.revision < 0:
            return Refusal("starting", grpc.StatusCode.UNAVAILABLE,
                           "no desired state read yet: retry")  # fmt: skip
        if node_id not in self.members.get(group, ()):
            return Refusal("group", grpc.StatusCode.PERMISSION_DENIED,
                           f"node {node_id!r} is not a node of node group {group!r}")  # fmt: skip
        return None

    def publish(
        self,
        revision: int,
        snapshots: dict[str, GroupSnapshot],
        members: dict[str, frozenset[str]],
    ) -> None:
        self.revision = revision
        self.latest = snapshots
        self.members = members
        self.metrics.revision.set(revision)
        for group, streams in self.streams.items():
            snapshot = self.snapshot_for(group)
            assert snapshot is not None
            for stream in list(streams):
                if self.verify_members and stream.session.node_id not in members.get(group, ()):
                    log.warning("xds: %s left node group %s: closing its stream",
                                stream.session.node_id, group)  # fmt: skip
                    stream.queue.put_nowait(_END)
                    continue
                stream.send(stream.session.on_snapshot(snapshot))
                self.after(stream)

    def on_request(self, stream: Stream, request: Request) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("xds: %s <- %s", stream.session.node_id, _describe_request(request))
        stream.send(stream.session.on_request(request))
        self.after(stream)

    def after(self, stream: Stream) -> None:
        """Count what Envoy said and report the stream's state when it changed."""
        session = stream.session
        for ack in session.acks:
            kind = KIND_NAMES[ack.type_url]
            if ack.error is None:
                self.metrics.acks.labels(kind).inc()
            else:
                self.metrics.nacks.labels(session.group, kind).inc()
                stream.error_revision = ack.revision
                log.warning(
                    "xds: %s (group %s) rejected %s of revision %d: %s",
                    session.node_id, session.group, kind, ack.revision, ack.error,
                )  # fmt: skip
        session.acks.clear()
        error = session.error
        if session.synced and error is None and session.target is not None:
            stream.good_revision = session.target.revision
            stream.error_revision = None
        state = (stream.good_revision, error, stream.error_revision if error else None)
        if state != stream.reported and (session.synced or error):
            stream.reported = state
            self.report(stream)


def _short(type_url: str) -> str:
    return KIND_NAMES.get(type_url, type_url)


def _describe_request(request: Request) -> str:
    parts = [_short(request.type_url), f"nonce={request.response_nonce!r}"]
    if request.HasField("error_detail"):
        parts.append(f"NACK={request.error_detail.message!r}")
    if hasattr(request, "resource_names_subscribe"):
        parts += [
            f"+{sorted(request.resource_names_subscribe)}",
            f"-{sorted(request.resource_names_unsubscribe)}",
            f"initial={dict(request.initial_resource_versions)}",
        ]
    else:
        parts += [f"version={request.version_info!r}", f"names={sorted(request.resource_names)}"]
    return " ".join(parts)


def _describe_response(response: Response) -> str:
    if hasattr(response, "removed_resources"):
        names = [r.name for r in response.resources]
        removed = list(response.removed_resources)
        return f"{_short(response.type_url)} nonce={response.nonce} +{names} -{removed}"
    return f"{_short(response.type_url)} nonce={response.nonce} n={len(response.resources)}"


def _mode(session: Session) -> str:
    return "delta" if session.delta else "sotw"


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def StreamAggregatedResources(  # noqa: N802 - the gRPC method's name
        self, request_iterator: AsyncIterator[Request], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Response]:
        async for response in self._serve(request_iterator, context, delta=False):
            yield response

    async def DeltaAggregatedResources(  # noqa: N802 - the gRPC method's name
        self, request_iterator: AsyncIterator[Request], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Response]:
        async for response in self._serve(request_iterator, context, delta=True):
            yield response

    async def _serve(
        self,
        requests: AsyncIterator[Request],
        context: grpc.aio.ServicerContext[Any, Any],
        delta: bool,
    ) -> AsyncIterator[Response]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        node = first.node
        if not node.id or not node.cluster:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first request must name the node: node.id and node.cluster (its node group)",
            )
        if self.hub.verify_members:
            refusal = self.hub.refusal(node.id, node.cluster, _certificate_names(context))
            if refusal is not None:
                log.warning("xds: refused %s (group %s): %s", node.id, node.cluster,
                            refusal.message)  # fmt: skip
                self.hub.metrics.refused.labels(refusal.reason).inc()
                await context.abort(refusal.code, refusal.message)
        stream = Stream(Session(node.id, node.cluster, delta))
        log.info("xds: %s connected (group %s, %s)", node.id, node.cluster, _mode(stream.session))
        self.hub.attach(stream)
        self.hub.on_request(stream, first)
        reader = asyncio.create_task(self._read(requests, stream))
        try:
            while (item := await stream.queue.get()) is not _END:
                self.hub.metrics.responses.labels(
                    KIND_NAMES.get(item.type_url, "?"), _mode(stream.session)
                ).inc()
                yield item
        finally:
            reader.cancel()
            self.hub.detach(stream)
            log.info("xds: %s disconnected", node.id)

    async def _read(self, requests: AsyncIterator[Request], stream: Stream) -> None:
        try:
            async for request in requests:
                self.hub.on_request(stream, request)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            stream.queue.put_nowait(_END)


@dataclass(frozen=True)
class Refusal:
    reason: str
    """The metric's label: certificate, group or starting."""
    code: grpc.StatusCode
    message: str


def _certificate_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    """The client certificate's common name and subject alternative names."""
    auth = context.auth_context()
    raw = [*auth.get("x509_common_name", []), *auth.get("x509_subject_alternative_name", [])]
    return {name.decode() for name in raw}


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
    ) -> None:
        self.store = store
        self.bind = bind
        self.tls = tls
        self.metrics_bind = metrics_bind
        self.block_ms = block_ms
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.secrets = SecretStore(store)
        self.board = StatusBoard(store)
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
        if self.metrics_bind:
            host, _, port = self.metrics_bind.rpartition(":")
            self._metrics_server, _ = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.metrics.registry
            )
        self._tasks.append(asyncio.create_task(self._reporter()))
        self._watcher = threading.Thread(target=self._watch, name="xds-watch", daemon=True)
        self._watcher.start()
        log.info("xds: serving ADS on %s (%s)", self.bind.rpartition(":")[0] + f":{self.port}",
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
        last: Snapshot | None = None
        for snapshot in follow(self.store, self._stop, block_ms=self.block_ms):
            if snapshot is None:
                if last is not None and self._fetch_missing_keys():
                    self._publish(last)  # a key was stored after its certificate
                continue
            last = snapshot
            self._publish(snapshot)

    def _publish(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        try:
            with gc_paused():
                state = resolve(snapshot)
                keys = self._keys_for(state)
                groups = self.cache.build(state, keys)
        except Exception:
            log.exception("xds: cannot translate revision %d; serving the last good one",
                          snapshot.revision)  # fmt: skip
            return
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
        try:
            record_published(self.store, snapshot.revision)
        except redis.RedisError as exc:  # serving goes on; the next revision records again
            log.warning("xds: cannot record the published revision: %s", exc)

    def _keys_for(self, state: DesiredState) -> dict[str, str]:
        """The keys the certificates in use name; refs are immutable, so each is read once."""
        refs = {c.key_ref for c in _used_certificates(state)}
        missing = refs - set(self._keys)
        if missing:
            self._keys.update(self.secrets.get_keys(missing))
        self._missing_keys = refs - set(self._keys)
        return {ref: self._keys[ref] for ref in refs if ref in self._keys}

    def _fetch_missing_keys(self) -> bool:
        """Whether a key missing at the last translation has been stored since."""
        if not self._missing_keys:
            return False
        found = self.secrets.get_keys(self._missing_keys)
        self._keys.update(found)
        self._missing_keys -= set(found)
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
