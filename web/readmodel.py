"""A snapshot of the desired state kept current from the change stream, for fast reads.

Parsing a thousand listeners and a thousand Services from Redis on every page view would
take longer than the page may take. The console instead keeps one snapshot per process
and, on each read, asks the change stream what changed since (one round trip, nothing to
parse when nothing changed), then re-reads only those objects. Trimmed past it, it takes
a new snapshot, as any follower of the store does. JSON forms are cached with the
objects, keyed by their revision, so API lists do not re-serialise unchanged objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from slb.model import KINDS, StoredObject, load_document
from slb.snapshot import Snapshot, Stored
from slb.storage.store import CompactedError, Store

T = TypeVar("T")


class ReadModel:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._json: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._derived: dict[str, tuple[Hashable, Any]] = {}

    def snapshot(self, store: Store) -> Snapshot:
        """The desired state at least as new as the store's revision when this was called."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = store.snapshot()
                return self._snapshot
            try:
                changes = store.changes(self._snapshot.revision)
            except CompactedError:
                self._snapshot = store.snapshot()
                return self._snapshot
            if changes:
                touched = {(kind, key) for change in changes for _, kind, key in change.ops}
                self._snapshot = self._refresh(store, touched, changes[-1].revision)
            return self._snapshot

    def _refresh(self, store: Store, touched: set[tuple[str, str]], revision: int) -> Snapshot:
        assert self._snapshot is not None
        pipe = store.redis.pipeline(transaction=True)
        ordered = sorted(touched)
        for kind, key in ordered:
            pipe.hget(store.key("doc", kind), key)
            pipe.hget(store.key("rev", kind), key)
        replies = pipe.execute()
        objects: dict[str, dict[str, Stored[StoredObject]]] = {}
        for i, (kind, key) in enumerate(ordered):
            if kind not in KINDS:
                continue
            by_key = objects.setdefault(kind, dict(self._snapshot.objects.get(kind, {})))
            doc, rev = replies[2 * i], replies[2 * i + 1]
            self._json.pop((kind, key), None)
            if doc is None:
                by_key.pop(key, None)
            else:
                by_key[key] = Stored(load_document(doc), int(rev))
        merged: Mapping[str, Mapping[str, Stored[StoredObject]]] = {
            **self._snapshot.objects,
            **objects,
        }
        return Snapshot(revision, merged)

    def derived(self, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, remembered while `key` (e.g. the snapshot's revision) stays the same."""
        cached = self._derived.get(name)
        if cached is not None and cached[0] == key:
            value: T = cached[1]
            return value
        value = compute()
        self._derived[name] = (key, value)
        return value

    def as_json(self, stored: Stored[StoredObject]) -> dict[str, Any]:
        """The object's JSON form, serialised once per revision."""
        cache_key = (stored.obj.kind, stored.obj.key)
        cached = self._json.get(cache_key)
        if cached is not None and cached[0] == stored.revision:
            return cached[1]
        document = stored.obj.model_dump(mode="json")
        self._json[cache_key] = (stored.revision, document)
        return document
