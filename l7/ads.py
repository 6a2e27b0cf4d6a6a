"""ADS, the gRPC service, and the hub that fans the desired state out to connected Envoys.

Everything here runs on the server's event loop. Each connected Envoy is a `Stream`: its
session (`l7.session`) decides what to send, and its queue holds the responses waiting
to go. The `Hub` keeps the latest snapshot of every node group (handed over by the
server's watcher thread, `l7.server`), sends it to the group's streams, counts every ACK
and NACK, and reports each stream's state when it changes. Under mutual TLS, an Envoy
gets a stream only as a node of the group it asks for, named by its client certificate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from l7.cache import GroupSnapshot
from l7.metrics import Metrics
from l7.session import Request, Response, Session
from l7.translate.common import KIND_NAMES

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
    holds_config: bool = False
    """The Envoy came with configuration (a reconnect): it must never be sent a blank one."""

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
        self.blank = False
        """Nothing trusted to serve: the store is empty and nothing was served from it yet.
        An Envoy that holds nothing gets the empty configuration (so it gets ready); one
        that holds configuration gets nothing (so it keeps it)."""

    def snapshot_for(self, stream: Stream) -> GroupSnapshot | None:
        if self.revision < 0 or (self.blank and stream.holds_config):
            return None
        group = stream.session.group
        return self.latest.get(group) or GroupSnapshot.empty(group, self.revision)

    def attach(self, stream: Stream) -> None:
        session = stream.session
        self.streams.setdefault(session.group, set()).add(stream)
        self.metrics.streams.labels(session.group, _mode(session)).inc()
        snapshot = self.snapshot_for(stream)
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
        self.blank = False
        self.metrics.revision.set(revision)
        for group, streams in self.streams.items():
            for stream in list(streams):
                snapshot = self.snapshot_for(stream)
                assert snapshot is not None
                if self.verify_members and stream.session.node_id not in members.get(group, ()):
                    log.warning("xds: %s left node group %s: closing its stream",
                                stream.session.node_id, group)  # fmt: skip
                    stream.queue.put_nowait(_END)
                    continue
                stream.send(stream.session.on_snapshot(snapshot))
                self.after(stream)

    def publish_blank(self) -> None:
        """The store is empty and nothing trusted was served yet: Envoys that hold nothing
        get the empty configuration, the others keep theirs (`slb.integrity`)."""
        if self.revision >= 0:
            return
        self.blank, self.revision, self.latest = True, 0, {}
        for streams in self.streams.values():
            for stream in list(streams):
                if (snapshot := self.snapshot_for(stream)) is not None:
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


def _holds_config(first: Request) -> bool:
    """Whether an Envoy's first request says it already has configuration: a version it
    accepted (SotW), or resources it holds (Delta)."""
    if isinstance(first, discovery_pb2.DeltaDiscoveryRequest):
        return bool(first.initial_resource_versions)
    return bool(first.version_info)


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
        stream = Stream(Session(node.id, node.cluster, delta), holds_config=_holds_config(first))
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
