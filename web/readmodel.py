"""A snapshot of the desired state kept current from the change stream, for fast reads.

Parsing a thousand listeners and a thousand Services from Redis on every page view would
take longer than the page may take. The console instead keeps one follower of the store
(`slb.storage.follow`) per process and polls it on each read: nothing to parse when
nothing changed, only the touched objects re-read when something did. JSON forms are
cached with the objects, keyed by their revision, so API lists do not re-serialise
unchanged objects; a change drops the forms of what it touched (a fresh snapshot, all).
Listeners' placements move with the stream too (`web.state.PlacementBook`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from slb.model import StoredObject
from slb.snapshot import Snapshot, Stored
from slb.storage.follow import Follower
from slb.storage.store import Store
from web.state import Placement, PlacementBook

T = TypeVar("T")


class ReadModel:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._follower: Follower | None = None
        self._json: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._derived: dict[str, tuple[Hashable, Any]] = {}
        self._book = PlacementBook()

    def snapshot(self, store: Store) -> Snapshot:
        """The desired state at least as new as the store's revision when this was called.

        The follower keeps the first request's store: every request's shares the app's
        connection pool and prefix.
        """
        return self.placed(store)[0]

    def placed(self, store: Store) -> tuple[Snapshot, dict[str, Placement]]:
        """`snapshot`, with every listener's placement in it."""
        with self._lock:
            if self._follower is None:
                self._follower = Follower(store)
            stood = self._follower.snapshot
            step = self._follower.poll()
            touched = None
            if step.changes is None:
                self._json.clear()
            else:
                touched = [(kind, key) for change in step.changes for _, kind, key in change.ops]
                for pair in touched:
                    self._json.pop(pair, None)
            if self._book.revision != step.revision:
                # moved past `touched` from where the book stands; else (a fresh snapshot,
                # or an update that failed before) everything is placed again
                follows = stood is not None and self._book.revision == stood.revision
                self._book.update(step.snapshot, touched if follows else None)
            return step.snapshot, self._book.placed

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
