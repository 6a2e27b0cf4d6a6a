"""One Envoy's ADS stream: what it holds, what it asked for, and what to send it next.

Plain logic, no gRPC: the server feeds it Envoy's requests and new snapshots, and sends
whatever it returns. It follows Envoy's xDS protocol:

- every response carries a fresh nonce; a SotW request whose nonce is not the latest one
  sent for its type is stale and ignored (a Delta one still changes subscriptions);
- at most one response per type is in flight; the next one of that type waits for the
  ACK or NACK;
- make-before-break: new and changed clusters go first (the ones they replace stay);
  endpoints and secrets are answered as Envoy asks for them (it asks while new clusters
  warm, and ACKs the clusters only once they are warm); listeners and routes wait until
  the clusters are ACKed and every one of them has its endpoints; removals of clusters
  wait until nothing else is in flight, so no route points at a cluster being removed;
- a NACK (`error_detail`) leaves Envoy on its last good configuration; the rejected
  content counts as sent, so it is not sent again until the desired state changes;
- only what changed is sent: Delta sends changed resources by hash (and skips what Envoy
  already holds on reconnect, from `initial_resource_versions`); SotW sends a type only
  when its hashes changed: all of it for listeners and clusters, the changed resources
  for the others.

Finding what changed costs what changed: once Envoy holds the whole target, a snapshot
that follows it (`GroupSnapshot.since`) is compared only on the names it touched, and
those Envoy subscribes to meanwhile (`_scope`); anything else (a stream's start, a NACK,
a snapshot that does not follow) compares everything.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from envoy.service.discovery.v3 import discovery_pb2

from l7.cache import GroupSnapshot, Resource
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPES

WILDCARD = frozenset({LISTENER, CLUSTER})
"""Types Envoy subscribes to as a whole; the others by name."""

# xds-protos has no type stubs, so Envoy's messages are typed Any.
Response: TypeAlias = Any
"""A DiscoveryResponse (SotW) or DeltaDiscoveryResponse."""
Request: TypeAlias = Any
"""A DiscoveryRequest (SotW) or DeltaDiscoveryRequest."""

Step = tuple[str, list[Resource], list[str]]
"""A response to send: type URL, resources to add or update, names to remove."""


class Wait(enum.Enum):
    WAIT = "wait"
    """Nothing further can be sent until Envoy answers."""


WAIT = Wait.WAIT


@dataclass
class TypeState:
    requested: bool = False
    """Envoy asked for this type; nothing is sent before it does."""
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    """Subscribed names, for types Envoy subscribes to by name."""
    responded: bool = False
    sent: dict[str, str] = field(default_factory=dict)
    """Name -> version Envoy was last sent (and holds, unless it NACKed)."""
    held: dict[str, Resource] = field(default_factory=dict)
    """The resources behind `sent` (SotW re-sends listeners and clusters whole)."""
    nonce: str = ""
    inflight: InFlight | None = None
    error: str | None = None
    """The last NACK's message, until a later response of this type is ACKed."""


@dataclass(frozen=True)
class InFlight:
    nonce: str
    revision: int


@dataclass(frozen=True)
class Ack:
    """What an ACK or NACK said, for the server to count and report."""

    type_url: str
    revision: int
    error: str | None


@dataclass
class Session:
    node_id: str
    group: str
    delta: bool
    types: dict[str, TypeState] = field(default_factory=lambda: {t: TypeState() for t in TYPES})
    target: GroupSnapshot | None = None
    acks: list[Ack] = field(default_factory=list)
    """ACKs and NACKs since the server last looked (it drains the list)."""
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _done: bool = False
    """The last look found nothing left to send (only inputs change that, and each looks)."""
    _scope: dict[str, set[str]] | None = None
    """Per type, the only names that may differ between what Envoy holds and the target;
    None: any may."""

    # -- inputs ---------------------------------------------------------------------------

    def on_snapshot(self, snapshot: GroupSnapshot) -> list[Response]:
        follows = self.target is not None and snapshot.since == self.target.revision
        if follows and self._scope is not None:
            for type_url, names in snapshot.touched.items():
                self._scope[type_url] |= names
        else:
            self._scope = None
        self.target = snapshot
        return self._advance()

    def on_request(self, request: Request) -> list[Response]:
        type_url = request.type_url
        if type_url not in self.types:
            return []
        state = self.types[type_url]
        nonce = request.response_nonce
        before = (state.requested, state.wildcard, set(state.names))
        if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
            self._subscribe_delta(state, type_url, request)
        elif nonce and nonce != state.nonce:
            return []  # stale: Envoy repeats its subscription with the newer nonce
        else:
            self._subscribe_sotw(state, type_url, request)
        if self._scope is not None:
            if before[:2] != (True, state.wildcard):
                self._scope = None  # a type's first request, or a wildcard that changed
            else:
                self._scope[type_url] |= state.names - before[2]
        state.requested = True
        inflight = state.inflight
        if inflight is not None and nonce == inflight.nonce:
            state.inflight = None
            state.error = None
            if request.HasField("error_detail"):
                detail = request.error_detail
                state.error = detail.message or f"rejected (code {detail.code})"
            self.acks.append(Ack(type_url, inflight.revision, state.error))
        return self._advance()

    @staticmethod
    def _subscribe_sotw(
        state: TypeState, type_url: str, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        names = set(request.resource_names)
        if type_url in WILDCARD and (not names or "*" in names):
            state.wildcard = True
            return
        for gone in state.names - names:
            state.sent.pop(gone, None)
            state.held.pop(gone, None)
        state.names = names

    @staticmethod
    def _subscribe_delta(
        state: TypeState, type_url: str, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        subscribe = set(request.resource_names_subscribe)
        if not state.requested:
            # The stream's first request for the type: what Envoy already holds (from an
            # earlier stream) need not be sent again.
            if type_url in WILDCARD and (not subscribe or "*" in subscribe):
                state.wildcard = True
            state.sent.update(request.initial_resource_versions)
        elif "*" in subscribe and type_url in WILDCARD:
            state.wildcard = True
        for gone in request.resource_names_unsubscribe:
            state.names.discard(gone)
            state.sent.pop(gone, None)
            state.held.pop(gone, None)
        state.names |= subscribe - {"*"}

    # -- what to send ---------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Envoy holds the whole target (or rejected part of it): nothing left to send."""
        return (
            self.target is not None
            and self._done
            and not any(s.inflight for s in self.types.values())
        )

    @property
    def error(self) -> str | None:
        errors = [f"{t.rsplit('.', 1)[-1]}: {s.error}" for t, s in self.types.items() if s.error]
        return "; ".join(errors) or None

    def _advance(self) -> list[Response]:
        out: list[Response] = []
        self._done = False
        if self.target is None:
            return out
        while True:
            step = self._next()
            if step is None or step is WAIT:
                self._done = step is None
                if self.synced and self.error is None:  # Envoy holds all of the target
                    self._scope = {t: set() for t in TYPES}
                return out
            out.append(self._respond(*step))

    def _next(self) -> Step | Wait | None:
        """The next response in make-before-break order; WAIT for Envoy; None: all sent."""
        phases: tuple[Callable[[], Step | Wait | None], ...] = (
            self._add_clusters,
            lambda: self._by_name(ENDPOINT),
            lambda: self._by_name(SECRET),
            self._clusters_warm,
            self._listeners,
            lambda: self._by_name(ROUTE),
            self._quiet,
            self._remove_clusters,
            self._remove_by_name,
        )
        for phase in phases:
            step = phase()
            if step is not None:
                return step
        return None

    def _changed(self, type_url: str) -> list[Resource]:
        """The target's resources of a type whose version Envoy was not sent, by name."""
        want, sent = self._want(type_url), self.types[type_url].sent
        if self._scope is None:
            return [r for n, r in sorted(want.items()) if sent.get(n) != r.version]
        names = sorted(n for n in self._scope[type_url] if n in want)
        return [want[n] for n in names if sent.get(n) != want[n].version]

    def _candidates(self, type_url: str, sent: Mapping[str, str]) -> list[str]:
        """The names Envoy was sent that may be gone from the target: all of them, or
        those in scope (in name order)."""
        if self._scope is None:
            return list(sent)
        return sorted(n for n in self._scope[type_url] if n in sent)

    def _want(self, type_url: str) -> Mapping[str, Resource]:
        assert self.target is not None
        return self.target.resources[type_url]

    def _open(self, type_url: str) -> TypeState | None:
        """The type's state if a response of it may be sent now."""
        state = self.types[type_url]
        return state if state.requested and state.inflight is None else None

    def _add_clusters(self) -> Step | None:
        """New and changed clusters; the ones they replace stay until routes move off them."""
        cds = self._open(CLUSTER)
        if cds is None:
            return None
        updates = self._changed(CLUSTER)
        return (CLUSTER, updates, []) if updates or not cds.responded else None

    def _clusters_warm(self) -> Wait | None:
        """Listeners and routes wait until Envoy ACKed the clusters (it does once they are
        warm) and every cluster has its endpoints (unless Envoy rejected the clusters)."""
        cds, eds = self.types[CLUSTER], self.types[ENDPOINT]
        if not cds.requested:
            return None
        if cds.inflight is not None or self._changed(CLUSTER):
            return WAIT
        want = self._want(CLUSTER)
        names = want if self._scope is None else self._scope[CLUSTER] | self._scope[ENDPOINT]
        if cds.error is None and any(n in want and n not in eds.sent for n in names):
            return WAIT
        return None

    def _listeners(self) -> Step | None:
        lds = self._open(LISTENER)
        if lds is None:
            return None
        want = self._want(LISTENER)
        updates = self._changed(LISTENER)
        removals = [n for n in self._candidates(LISTENER, lds.sent) if n not in want]
        return (LISTENER, updates, removals) if updates or removals or not lds.responded else None

    def _by_name(self, type_url: str) -> Step | None:
        state = self._open(type_url)
        if state is None:
            return None
        available = self._want(type_url)
        names = state.names if self._scope is None else self._scope[type_url] & state.names
        updates = [
            available[n]
            for n in sorted(names)
            if n in available and state.sent.get(n) != available[n].version
        ]
        return (type_url, updates, []) if updates else None

    def _quiet(self) -> Wait | None:
        """Removals wait until every update is ACKed."""
        return WAIT if any(s.inflight for s in self.types.values()) else None

    def _remove_clusters(self) -> Step | None:
        cds = self._open(CLUSTER)
        if cds is None:
            return None
        want = self._want(CLUSTER)
        removals = [n for n in self._candidates(CLUSTER, cds.sent) if n not in want]
        return (CLUSTER, [], removals) if removals else None

    def _remove_by_name(self) -> Step | None:
        """Delta only: a subscribed resource gone from the desired state is removed."""
        if not self.delta:
            return None
        for type_url in (ENDPOINT, SECRET, ROUTE):
            state = self._open(type_url)
            if state is None:
                continue
            want = self._want(type_url)
            sent = self._candidates(type_url, state.sent)
            gone = [n for n in sent if n in state.names and n not in want]
            if gone:
                return type_url, [], gone
        return None

    def _respond(self, type_url: str, updates: list[Resource], removals: list[str]) -> Response:
        assert self.target is not None
        state = self.types[type_url]
        nonce = str(next(self._nonces))
        revision = self.target.revision
        for resource in updates:
            state.sent[resource.name] = resource.version
            state.held[resource.name] = resource
        for name in removals:
            state.sent.pop(name, None)
            state.held.pop(name, None)
        if type_url == CLUSTER:
            # A new or changed cluster needs its endpoints (again) before anything uses it.
            eds = self.types[ENDPOINT]
            for resource in updates:
                eds.sent.pop(resource.name, None)
            if self._scope is not None:
                self._scope[ENDPOINT].update(r.name for r in updates)
        state.nonce = nonce
        state.responded = True
        state.inflight = InFlight(nonce, revision)
        if self.delta:
            return discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=str(revision),
                type_url=type_url,
                nonce=nonce,
                resources=[r.delta for r in updates],
                removed_resources=removals,
            )
        if type_url in WILDCARD:
            bodies = [state.held[n].body for n in sorted(state.held)]
        else:
            bodies = [r.body for r in updates]
        return discovery_pb2.DiscoveryResponse(
            version_info=str(revision), type_url=type_url, nonce=nonce, resources=bodies
        )
