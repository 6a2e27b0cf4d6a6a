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
    since: int | None = field(default=None, compare=False)
    """The revision of the group's previous snapshot, which `touched` counts from."""
    touched: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)
    """Type URL -> the names that may differ from that snapshot; a type missing here is
    the very same map."""

    @classmethod
    def empty(cls, group: str, revision: int) -> GroupSnapshot:
        return cls(group, revision, {t: {} for t in TYPES})

    def versions(self, type_url: str) -> dict[str, str]:
        return {name: r.version for name, r in self.resources[type_url].items()}


def changed(old: GroupSnapshot | None, new: GroupSnapshot) -> dict[str, tuple[int, int]]:
    """Per type: how many resources were added or changed, and how many removed."""
    out = {}
    patched = old is not None and new.since is not None and new.since == old.revision
    for type_url in TYPES:
        if old is not None and old.resources[type_url] is new.resources[type_url]:
            continue  # not copied by the cache: nothing in it changed
        before = old.resources[type_url] if old else {}
        after = new.resources[type_url]
        names = new.touched.get(type_url, frozenset()) if patched else before.keys() | after.keys()
        updated = sum(
            1
            for n in names
            if n in after and (n not in before or before[n].version != after[n].version)
        )
        removed = sum(1 for n in names if n in before and n not in after)
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
class _Patch:
    """The groups' resource maps being patched: each map is copied before its first write
    (the last build's maps are in snapshots streams still hold), and every name written
    is noted, by group and type."""

    groups: dict[str, dict[str, dict[str, Resource]]]
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    touched: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def write(self, group: str, type_url: str, name: str, resource: Resource | None) -> None:
        """Put `resource` under `name` (None: remove the name)."""
        names = self.touched.get((group, type_url))
        if names is None:
            names = self.touched[(group, type_url)] = set()
            self.groups[group] = {
                **self.groups[group],
                type_url: dict(self.groups[group][type_url]),
            }
        names.add(name)
        if resource is None:
            self.groups[group][type_url].pop(name, None)
        else:
            self.groups[group][type_url][name] = resource


@dataclass
class _Part:
    """What one L7 listener adds to its node group's snapshot."""

    resolved: ResolvedListener
    group: str
    problems: tuple[str, ...]
    resources: tuple[tuple[str, Resource], ...]
    secrets: tuple[str, ...]
    """The certificates it serves, by name."""


@dataclass
class SnapshotCache:
    """Builds every node group's snapshot from a desired state, reusing unchanged parts.

    A build looks again only at the listeners whose resolved object is not the one it saw
    last time (`slb.resolve.Resolver` keeps the others' objects), unless the certificates,
    keys or namespaces changed; the groups' resource maps are copied and patched where
    those listeners were, so a change costs what it touched, not every listener again."""

    _config: dict[str, _ConfigEntry] = field(default_factory=dict)
    _endpoints: dict[str, _EndpointEntry] = field(default_factory=dict)
    _secrets: dict[str, tuple[Certificate, str, Resource]] = field(default_factory=dict)
    _parts: dict[str, _Part] = field(default_factory=dict)
    _inputs: tuple[object, ...] | None = None
    _groups: dict[str, dict[str, dict[str, Resource]]] = field(default_factory=dict)
    _problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _revision: int | None = None
    """The revision of the state the cache built last."""
    _members: dict[str, int] = field(default_factory=dict)
    """How many L7 listeners each node group has."""

    def build(
        self,
        state: DesiredState,
        keys: Mapping[str, str],
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, GroupSnapshot]:
        """Snapshots of every node group that has L7 listeners or is declared; `namespaces`
        as `l7.translate.servable` takes them."""
        namespaces = namespaces or {}
        inputs = (state.certificates, dict(keys), dict(namespaces))
        same_inputs = inputs == self._inputs
        if same_inputs and state.since is not None and state.since == self._revision:
            parts, redone, gone = self._changed_parts(state, keys, namespaces)
        else:
            parts, redone, gone = self._all_parts(state, keys, namespaces, same_inputs)
        patch = self._patched(state, keys, parts, redone, gone)
        groups, problems = patch.groups, patch.problems
        for name in gone:
            self._config.pop(name, None)
            self._endpoints.pop(name, None)
        used = {n for by_type in groups.values() for n in by_type[SECRET]}
        for name in set(self._secrets) - used:
            del self._secrets[name]
        since, self._revision = self._revision, state.revision
        self._parts, self._inputs = parts, inputs
        self._groups, self._problems = groups, problems
        return {
            group: GroupSnapshot(
                group,
                state.revision,
                by_type,
                problems.get(group, ()),
                since,
                {t: frozenset(n) for (g, t), n in patch.touched.items() if g == group},
            )
            for group, by_type in groups.items()
        }

    def _changed_parts(
        self,
        state: DesiredState,
        keys: Mapping[str, str],
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> tuple[dict[str, _Part], list[str], list[str]]:
        """Every listener's part, looking only at those the resolver says it resolved
        again since the state this cache built last; which were redone, and which went."""
        parts, redone, gone = dict(self._parts), [], []
        for name in sorted(state.changed):
            resolved = state.by_name.get(name)
            if resolved is None or not resolved.listener.protocol.is_l7:
                if parts.pop(name, None) is not None:
                    gone.append(name)
                continue
            old = parts.get(name)
            if old is not None and old.resolved is resolved:
                continue
            parts[name] = self._part(resolved, state.certificates, keys, namespaces)
            redone.append(name)
        return parts, redone, gone

    def _all_parts(
        self,
        state: DesiredState,
        keys: Mapping[str, str],
        namespaces: Mapping[str, Mapping[str, str]],
        same_inputs: bool,
    ) -> tuple[dict[str, _Part], list[str], list[str]]:
        """Every listener's part, looking at each (a state from `resolve`, or new inputs)."""
        parts: dict[str, _Part] = {}
        redone: list[str] = []
        for resolved in state.listeners:
            if not resolved.listener.protocol.is_l7:
                continue
            name = resolved.listener.name
            old = self._parts.get(name)
            if same_inputs and old is not None and old.resolved is resolved:
                parts[name] = old
                continue
            parts[name] = self._part(resolved, state.certificates, keys, namespaces)
            redone.append(name)
        return parts, redone, [name for name in self._parts if name not in parts]

    def _patched(
        self,
        state: DesiredState,
        keys: Mapping[str, str],
        parts: Mapping[str, _Part],
        redone: list[str],
        gone: list[str],
    ) -> _Patch:
        """The groups' resources and problems with the parts of `redone` and `gone`
        listeners replaced: each map they touch copied once, then patched; problems and
        certificates of a group gathered again only where they changed."""
        self._members = self._counted(parts, redone, gone)
        patch = _Patch({g: by_type for g, by_type in self._groups.items()
                        if g in state.node_groups or g in self._members})  # fmt: skip
        for group in (*state.node_groups, *self._members):
            patch.groups.setdefault(group, {t: {} for t in TYPES})
        regather: set[str] = set()
        for name in [*gone, *redone]:
            old = self._parts.get(name)
            if old is not None and old.group in patch.groups:
                for type_url, resource in old.resources:
                    patch.write(old.group, type_url, resource.name, None)
                if old.problems or old.secrets:
                    regather.add(old.group)
        for name in redone:
            new = parts[name]
            for type_url, resource in new.resources:
                patch.write(new.group, type_url, resource.name, resource)
            if new.problems or new.secrets:
                regather.add(new.group)
        if not self._inputs_same_secrets(state, keys):
            regather |= set(patch.groups)
        patch.problems = {g: p for g, p in self._problems.items() if g in patch.groups}
        for group in regather & set(patch.groups):
            in_group = [parts[n] for n in sorted(parts) if parts[n].group == group]
            patch.problems[group] = tuple(p for part in in_group for p in part.problems)
            for cert_name in list(patch.groups[group][SECRET]):
                patch.write(group, SECRET, cert_name, None)
            for cert_name in sorted({c for part in in_group for c in part.secrets}):
                cert = state.certificates[cert_name]
                patch.write(group, SECRET, cert_name, self._secret(cert, keys[cert.key_ref]))
        return patch

    def _counted(
        self, parts: Mapping[str, _Part], redone: list[str], gone: list[str]
    ) -> dict[str, int]:
        """How many L7 listeners each group has, from the last count and what changed."""
        members = dict(self._members)
        for name in [*gone, *redone]:
            if (old := self._parts.get(name)) is not None:
                members[old.group] -= 1
        for name in redone:
            members[parts[name].group] = members.get(parts[name].group, 0) + 1
        return {g: n for g, n in members.items() if n}

    def _inputs_same_secrets(self, state: DesiredState, keys: Mapping[str, str]) -> bool:
        return self._inputs is not None and self._inputs[:2] == (state.certificates, dict(keys))

    def _part(
        self,
        resolved: ResolvedListener,
        certificates: Mapping[str, Certificate],
        keys: Mapping[str, str],
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> _Part:
        """A listener translated (or its last good translation, if it cannot be now)."""
        group, name = resolved.node_group, resolved.listener.name
        usable, found = servable(resolved, certificates, keys, namespaces)
        problems = list(found)
        if usable is None:
            self._config.pop(name, None)
            self._endpoints.pop(name, None)
            return _Part(resolved, group, tuple(problems), (), ())
        try:
            configuration = self._configuration(resolved, usable)
            assignments = self._load_assignments(resolved)
        except Exception as exc:  # one listener's trouble never holds the others back
            kept = self._last_good(name)
            log.exception("xds: listener %s cannot be translated", name)
            problems.append(
                f"listener {name!r}: cannot be translated ({exc!r}); "
                + ("serving its last good configuration" if kept else "not served")
            )
            if kept is None:
                return _Part(resolved, group, tuple(problems), (), ())
            configuration, assignments = kept
        resources = (*configuration, *((ENDPOINT, r) for r in assignments))
        return _Part(resolved, group, tuple(problems), resources, tuple(sorted(usable)))

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
