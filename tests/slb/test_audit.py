"""The audit trail is bounded by entries, age and size, so no writer can fill Redis."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from slb.storage.audit import MAX_DOCUMENT_BYTES, AuditLog
from slb.storage.store import Store


def record(log: AuditLog, after: dict[str, Any], key: str = "web") -> None:
    log.record_document(who="cli:ops", action="put", kind="Listener", key=key, before=None,
                        after=after, revision=1)  # fmt: skip


def test_entries_older_than_the_age_limit_are_trimmed(store: Store) -> None:
    log = AuditLog(store)
    old = {"at": "1.0", "who": "cli:ops", "action": "put", "kind": "Listener", "key": "old",
           "revision": "1", "before": "null", "after": "null"}  # fmt: skip
    for n in range(250):  # a year ago and more
        store.redis.xadd(log.key, old, id=f"{1_700_000_000_000 + n}-0")
    record(log, {"port": 80})
    kept = [e.key for e in log.entries(limit=1000)]
    assert kept[0] == "web"
    assert kept.count("old") < 100  # trimmed by whole stream nodes (of 100 entries)


def test_a_huge_document_is_recorded_by_its_size_and_digest(store: Store) -> None:
    log = AuditLog(store)
    huge = {"annotations": {"note": "x" * (2 * MAX_DOCUMENT_BYTES)}}
    record(log, huge)
    record(log, {"port": 80}, key="small")
    small, big = log.entries()
    assert small.after == {"port": 80}
    raw = json.dumps(huge)
    assert big.after == {"truncated": True, "bytes": len(raw),
                         "sha256": hashlib.sha256(raw.encode()).hexdigest()}  # fmt: skip
    assert store.redis.memory_usage(log.key) < 4 * MAX_DOCUMENT_BYTES
