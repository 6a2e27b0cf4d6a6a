"""Per-node-group snapshots of Envoy resources, each resource packed and hashed once.

A resource's version is a hash of its deterministic serialization, so equal
configuration has equal versions whatever the revision: Delta streams never re-send an
unchanged resource, and SotW streams skip a type whose hashes did not change.

Translation is the pure `l7.translate`; this cache only avoids repeating it. A
listener's configuration (listener, routes, clusters) is rebuilt only when the listener,
its VIP or its certificates change, and its endpoints only when its backends change;
everything else is reused from the previous build, compared by value (unchanged objects
are usually the very same objects, which makes the comparison cheap).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from l7.translate import servable
from l7.translate.cluster import serialized_clusters
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, TYPES, clusters_of
from l7.translate.endpoint import serialized_load_assignments
from l7.translate.listener import serialized_listener
from l7.translate.policy import weighted
from l7.translate.route import serialized_route_configuration
from l7.translate.secret import secret
from slb.model import Backend, Certificate, IPAddress, Listener
from slb.resolve import DesiredState, ResolvedListener

log = logging.getLogger(__name__)


class Resource:
    """One named resource: its content hash, serialized once and shared by every stream.

    The packed form responses carry is made on first use and then holds the only copy of
    the bytes (a SotW response takes the Any inside the Delta one).
    """

    __slots__ = ("_delta", "_raw", "name", "type_url", "version")

    def __init__(self, name: str, type_url: str, raw: bytes) -> None:
        self.name = name
        self.type_url = type_url
        self.version = hashlib.blake2b(raw, digest_size=8).hexdigest()
        self._raw: bytes | None = raw
        self._delta: discovery_pb2.Resource | None = None

    @classmethod
    def of(cls, name: str, message: Message) -> Resource:
        type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
        return cls(name, type_url, message.SerializeToString(deterministic=True))

    @property
    def delta(self) -> discovery_pb2.Resource:
        """The resource as a Delta response carries it."""
        if self._delta is None:
            body = any_pb2.Any(type_url=self.type_url, value=self._raw)
            self._delta = discovery_pb2.Resource(
                name=self.name, version=self.version, resource=body
            )
            self._raw = None
        return self._delta

    @property
    def body(self) -> any_pb2.Any:
        """The resource as a SotW response carries it."""
        body: any_pb2.Any = self.delta.resource
        return body

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, {self.version})"


@dataclass(frozen=True)
class GroupSnapshot:
    """Everything the Envoys of one node group serve at one revision."""

    group: str
    revision: int
    resources: Mapping[str, Mapping[str, Resource]]
    """Type URL -> name -> resource; every type in `TYPES` is present."""
    problems: tuple[str, ...] = ()

    @classmethod
    def empty(cls, group: str, revision: int) -> GroupSnapshot:
        return cls(group, revision, {t: {} for t in TYPES})

    def versions(self, type_url: str) -> dict[str, str]:
        return {name: r.version for name, r in self.resources[type_url].items()}


def changed(old: GroupSnapshot | None, new: GroupSnapshot) -> dict[str, tuple[int, int]]:
    """Per type: how many resources were added or changed, and how many removed."""
    out = {}
    for type_url in TYPES:
        before = old.versions(type_url) if old else {}
        after = new.versions(type_url)
        updated = sum(1 for n, v in after.items() if before.get(n) != v)
        removed = sum(1 for n in before if n not in after)
        if updated or removed:
            out[type_url] = (updated, removed)
    return out


@dataclass
class _ConfigEntry:
    listener: Listener
    vip: IPAddress
    certificates: tuple[Certificate, ...]
    resources: tuple[tuple[str, Resource], ...]


@dataclass
class _EndpointEntry:
    key: tuple[bool, tuple[tuple[str, tuple[Backend, ...]], ...]]
    """Everything the endpoints depend on: weights used, each cluster's name and backends."""
    resources: tuple[Resource, ...]


@dataclass
class SnapshotCache:
    """Builds every node group's snapshot from a desired state, reusing unchanged parts."""

    _config: dict[str, _ConfigEntry] = field(default_factory=dict)
    _endpoints: dict[str, _EndpointEntry] = field(default_factory=dict)
    _secrets: dict[str, tuple[Certificate, str, Resource]] = field(default_factory=dict)

    def build(
        self,
        state: DesiredState,
        keys: Mapping[str, str],
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, GroupSnapshot]:
        """Snapshots of every node group that has L7 listeners or is declared; `namespaces`
        as `l7.translate.servable` takes them."""
        groups: dict[str, dict[str, dict[str, Resource]]] = {
            g: {t: {} for t in TYPES} for g in state.node_groups
        }
        problems: dict[str, list[str]] = {g: [] for g in groups}
        seen: set[str] = set()
        secrets_used: dict[str, set[str]] = {}
        for resolved in state.listeners:
            if not resolved.listener.protocol.is_l7:
                continue
            group = resolved.node_group
            by_type = groups.setdefault(group, {t: {} for t in TYPES})
            group_problems = problems.setdefault(group, [])
            usable, listener_problems = servable(
                resolved, state.certificates, keys, namespaces or {}
            )
            group_problems += listener_problems
            if usable is None:
                continue
            name = resolved.listener.name
            try:
                configuration = self._configuration(resolved, usable)
                assignments = self._load_assignments(resolved)
            except Exception as exc:  # one listener's trouble never holds the others back
                kept = self._last_good(name)
                log.exception("xds: listener %s cannot be translated", name)
                group_problems.append(
                    f"listener {name!r}: cannot be translated ({exc!r}); "
                    + ("serving its last good configuration" if kept else "not served")
                )
                if kept is None:
                    continue
                configuration, assignments = kept
            seen.add(name)
            for type_url, resource in configuration:
                by_type[type_url][resource.name] = resource
            for resource in assignments:
                by_type[ENDPOINT][resource.name] = resource
            secrets_used.setdefault(group, set()).update(usable)
        for name in set(self._config) - seen:
            del self._config[name]
            self._endpoints.pop(name, None)
        all_secrets: set[str] = set()
        for group, names in secrets_used.items():
            for name in sorted(names):
                cert = state.certificates[name]
                groups[group][SECRET][name] = self._secret(cert, keys[cert.key_ref])
            all_secrets |= names
        for name in set(self._secrets) - all_secrets:
            del self._secrets[name]
        return {
            group: GroupSnapshot(group, state.revision, by_type, tuple(problems.get(group, ())))
            for group, by_type in groups.items()
        }

    def _configuration(
        self, resolved: ResolvedListener, usable: dict[str, Certificate]
    ) -> tuple[tuple[str, Resource], ...]:
        model, certs = resolved.listener, tuple(usable.values())
        entry = self._config.get(model.name)
        if (
            entry is not None
            and entry.listener == model
            and entry.vip == resolved.vip
            and entry.certificates == certs
        ):
            return entry.resources
        out: list[tuple[str, Resource]] = [
            (CLUSTER, Resource(name, CLUSTER, raw)) for name, raw in serialized_clusters(resolved)
        ]
        raw_listener = serialized_listener(resolved, usable)
        out.append((LISTENER, Resource(model.name, LISTENER, raw_listener)))
        out.append((ROUTE, Resource(model.name, ROUTE, serialized_route_configuration(resolved))))
        self._config[model.name] = _ConfigEntry(model, resolved.vip, certs, tuple(out))
        return tuple(out)

    def _last_good(
        self, name: str
    ) -> tuple[tuple[tuple[str, Resource], ...], tuple[Resource, ...]] | None:
        """What listener `name` was last translated to, if it ever was."""
        config, endpoints = self._config.get(name), self._endpoints.get(name)
        if config is None or endpoints is None:
            return None
        return config.resources, endpoints.resources

    def _load_assignments(self, resolved: ResolvedListener) -> tuple[Resource, ...]:
        model = resolved.listener
        key = (weighted(model), tuple(clusters_of(resolved)))
        entry = self._endpoints.get(model.name)
        if entry is not None and entry.key == key:
            return entry.resources
        assignments = serialized_load_assignments(resolved)
        resources = tuple(Resource(name, ENDPOINT, raw) for name, raw in assignments)
        self._endpoints[model.name] = _EndpointEntry(key, resources)
        return resources

    def _secret(self, cert: Certificate, key_pem: str) -> Resource:
        cached = self._secrets.get(cert.name)
        if cached is not None and cached[0] == cert and cached[1] == key_pem:
            return cached[2]
        resource = Resource.of(cert.name, secret(cert, key_pem))
        self._secrets[cert.name] = (cert, key_pem, resource)
        return resource
