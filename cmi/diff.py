"""Step: what a Service should own vs. what the store holds -> the writes that close the gap.

Only objects that differ in their stored form are written, so a rebuild that changes
nothing writes nothing, and the data planes are not woken for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from cmi.mirror import ObjectKey
from slb.model import StoredObject, dump_document
from slb.snapshot import Delete, Put


def diff(
    desired: Iterable[StoredObject],
    stored: Mapping[ObjectKey, StoredObject],
    owned: Set[ObjectKey],
) -> list[Put | Delete]:
    """Puts for the desired objects that are new or changed, deletes for what the Service
    owned (`owned`, refs into `stored`) and no longer wants."""
    want = {(o.kind, o.key): o for o in desired}
    ops: list[Put | Delete] = []
    for ref, obj in want.items():
        current = stored.get(ref)
        if current is None or dump_document(current) != dump_document(obj):
            ops.append(Put(obj))
    for ref in owned - set(want):
        ops.append(Delete(*ref))
    return ops
