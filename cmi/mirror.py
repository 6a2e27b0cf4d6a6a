"""The controller's copy of the store: what it wrote, and what operators wrote beside it.

Every turn compares what Services want with what is stored, and the conflict, grace and
readiness checks look at every instance and listener: reading Redis for that each time
would cost a round trip per object. The mirror is loaded from a snapshot, updated with
each of the controller's own writes, and refreshed from the change stream for everyone
else's (`Controller._absorb`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from cmi.build import Previous
from cmi.gateway import gateway_key
from cmi.ingress import ingress_key
from slb.model import Certificate, Listener, LoadBalancer, OwnerKind, Service, StoredObject
from slb.snapshot import Change, Delete, Put, Snapshot, Stored

ObjectKey = tuple[str, str]
"""(kind, key): an object's address in the store."""
T = TypeVar("T", bound=StoredObject)


@dataclass
class Mirror:
    """Stored objects with their revisions, and which of them each Service owns."""

    objects: dict[ObjectKey, StoredObject] = field(default_factory=dict)
    owned: dict[str, set[ObjectKey]] = field(default_factory=dict)
    revisions: dict[ObjectKey, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, StoredObject]] = field(default_factory=dict)
    """`objects` by kind then key: `of` copies one kind instead of sifting them all (at
    10,000 Services, 30,000 objects on every turn)."""
    touched: set[ObjectKey] | None = None
    """What changed since `take_touched` last handed it out; None: everything (a load)."""
    version: int = 0
    """Moves with every change: a check whose inputs did not move need not run again."""

    def load(self, snapshot: Snapshot) -> int:
        """Replace everything with the snapshot's objects; return its revision."""
        self.objects, self.revisions, self.by_kind, self.touched = {}, {}, {}, None
        self.version += 1
        for kind, objs in snapshot.objects.items():
            for key, stored in objs.items():
                self.objects[(kind, key)] = stored.obj
                self.revisions[(kind, key)] = stored.revision
                self.by_kind.setdefault(kind, {})[key] = stored.obj
        self.owned = {}
        for ref, obj in self.objects.items():
            self._own(ref, obj)
        return snapshot.revision

    def put(self, obj: StoredObject, revision: int) -> None:
        ref = (obj.kind, obj.key)
        self.delete(ref)
        self.objects[ref] = obj
        self.revisions[ref] = revision
        self.by_kind.setdefault(ref[0], {})[ref[1]] = obj
        self._own(ref, obj)  # (delete above noted it as touched)

    def delete(self, ref: ObjectKey) -> None:
        old = self.objects.pop(ref, None)
        self.revisions.pop(ref, None)
        self.by_kind.get(ref[0], {}).pop(ref[1], None)
        self.version += 1
        if self.touched is not None:
            self.touched.add(ref)
        owner = service_owner(old) if old is not None else None
        if owner is not None:
            self.owned.get(owner, set()).discard(ref)

    def refresh(self, ref: ObjectKey, stored: Stored[StoredObject] | None) -> None:
        """The object as just read from the store; None: it is gone."""
        if stored is None:
            self.delete(ref)
        else:
            self.put(stored.obj, stored.revision)

    def apply(self, ops: Iterable[Put | Delete], revision: int) -> None:
        """Our own write, committed at `revision`."""
        for op in ops:
            if isinstance(op, Put):
                self.put(op.obj, revision)
            else:
                self.delete((op.kind, op.key))

    def take_touched(self) -> set[ObjectKey] | None:
        """What changed since the last call (None: everything, after a load), handed out
        once, for the steps that keep their own results between turns."""
        touched, self.touched = self.touched, set()
        return touched

    def _own(self, ref: ObjectKey, obj: StoredObject) -> None:
        owner = service_owner(obj)
        if owner is not None:
            self.owned.setdefault(owner, set()).add(ref)

    def of(self, cls: type[T]) -> dict[str, T]:
        """Every object of one kind, by key."""
        return cast(dict[str, T], dict(self.by_kind.get(cls.kind, {})))

    def previous(self, service_key: str) -> Previous:
        """What a Service owns now, for the build step to fall back on."""
        owned = [self.objects[ref] for ref in sorted(self.owned.get(service_key, ()))]
        return Previous(
            service=next((o for o in owned if isinstance(o, Service)), None),
            listeners={o.name: o for o in owned if isinstance(o, Listener)},
            load_balancer=next((o for o in owned if isinstance(o, LoadBalancer)), None),
            certificates={o.name: o for o in owned if isinstance(o, Certificate)},
        )


def service_owner(obj: StoredObject) -> str | None:
    """The key of the Service (or, prefixed, the Gateway or Ingress) that owns `obj`, if
    one does."""
    if isinstance(obj, Service):
        return obj.key
    owner = getattr(obj, "owner", None)
    if owner is not None and owner.kind is OwnerKind.SERVICE:
        return str(owner.name)
    if owner is not None and owner.kind is OwnerKind.GATEWAY:
        return gateway_key(str(owner.name))
    if owner is not None and owner.kind is OwnerKind.INGRESS:
        return ingress_key(str(owner.name))
    return None


def written_by_others(batch: Sequence[Change], identity: str) -> set[ObjectKey]:
    """The objects that writers other than `identity` touched: the mirror misses those."""
    return {
        (kind, key)
        for change in batch
        if change.meta.get("who") != identity
        for _, kind, key in change.ops
    }
