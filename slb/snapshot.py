"""The desired state as plain data: each object with its revision, the whole at one
revision, the writes that change it (`Put`, `Delete`) and a committed change.

Pure (no Redis): the store reads and writes these, and the pure cores (resolve, the l4
plan, the l7 translation, cmi's diff) take and make them without loading any I/O library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, cast

from slb.model import Namespace, StoredObject

T = TypeVar("T", bound=StoredObject)


@dataclass(frozen=True)
class Stored(Generic[T]):
    """An object as stored, with the revision at which it last changed."""

    obj: T
    revision: int


@dataclass(frozen=True)
class Synced:
    """cmi's mark on a store it rebuilt in full from Kubernetes (`slb.integrity`)."""

    store_id: str
    revision: int
    at: float
    """cmi's clock, unix time: a store restored from a backup carries an older mark."""
    adopted: bool = False
    """Marked by an operator (`slb store adopt`), not by cmi: the store is complete as it
    is, even what cmi cannot rebuild (operators' own objects)."""


@dataclass(frozen=True)
class Snapshot:
    """The whole desired state at one revision, and which store it was read from."""

    revision: int
    objects: Mapping[str, Mapping[str, Stored[StoredObject]]] = field(default_factory=dict)
    store_id: str | None = None
    """The store's identity, made by its first write: none if nothing wrote it since it
    was created or emptied."""
    synced: Synced | None = None
    syncing: str | None = None
    """The store id cmi is rebuilding from Kubernetes now, if it is."""

    def of(self, cls: type[T]) -> dict[str, Stored[T]]:
        """Every stored object of one kind, by key."""
        return cast(dict[str, Stored[T]], dict(self.objects.get(cls.kind, {})))

    def get(self, cls: type[T], key: str) -> T | None:
        stored = self.objects.get(cls.kind, {}).get(key)
        return cast(T, stored.obj) if stored else None


@dataclass(frozen=True)
class Put:
    obj: StoredObject
    expect: int | None = None
    """None: write regardless; 0: the object must not exist; N: it must be at revision N."""


@dataclass(frozen=True)
class Delete:
    kind: str
    key: str
    expect: int | None = None


Op = Put | Delete


@dataclass(frozen=True)
class Change:
    """One committed write: its revision and what it touched."""

    revision: int
    ops: tuple[tuple[Literal["put", "delete"], str, str], ...]
    meta: Mapping[str, str]
    store_id: str | None = None
    """The identity of the store that committed it."""


def namespace_labels(snapshot: Snapshot) -> dict[str, Mapping[str, str]]:
    """Each namespace's labels, from cmi's `Namespace` objects, as `admits` takes them: a
    namespace missing here is unknown, and only its name can admit it."""
    return {name: stored.obj.labels for name, stored in snapshot.of(Namespace).items()}
