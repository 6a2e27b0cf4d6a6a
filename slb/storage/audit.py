"""The audit trail: who changed what, when, from what to what.

Every operator write (CLI, console, API) is recorded in a Redis stream next to the
desired state, with the object before and after and the revision it made. Certificates'
private keys never enter it: they are not part of any desired-state document.

Bounded three ways, so a busy or hostile writer cannot fill Redis: by entries
(`MAX_ENTRIES`), by age (`MAX_AGE_S`), and by size (a document over `MAX_DOCUMENT_BYTES`,
say a Service with huge annotations, is recorded by its size and digest).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from slb.model import StoredObject
from slb.storage.store import Store

MAX_ENTRIES = 100_000
MAX_AGE_S = 90 * 86400
MAX_DOCUMENT_BYTES = 16 * 1024


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: float
    who: str
    action: str
    kind: str
    key: str
    revision: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditLog:
    FILTERS = ("who", "action", "kind", "key")
    """The fields `entries(**match)` looks entries up by: the console's and API's filters."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = store.key("audit")

    def record(
        self,
        *,
        who: str,
        action: str,
        kind: str,
        key: str,
        before: StoredObject | None,
        after: StoredObject | None,
        revision: int,
    ) -> None:
        self.record_document(
            who=who,
            action=action,
            kind=kind,
            key=key,
            before=before.model_dump(mode="json") if before else None,
            after=after.model_dump(mode="json") if after else None,
            revision=revision,
        )

    def record_document(
        self,
        *,
        who: str,
        action: str,
        kind: str,
        key: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        revision: int,
    ) -> None:
        """Record a write of something outside the desired state (console users, tokens)."""
        fields = {
            "at": repr(time.time()),
            "who": who,
            "action": action,
            "kind": kind,
            "key": key,
            "revision": str(revision),
            "before": _bounded(before),
            "after": _bounded(after),
        }
        oldest = f"{int((time.time() - MAX_AGE_S) * 1000)}-0"
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xadd(self.key, fields, maxlen=MAX_ENTRIES, approximate=True)
        pipe.xtrim(self.key, minid=oldest, approximate=True)
        pipe.execute()

    def entries(self, limit: int = 100, **match: str) -> list[AuditEntry]:
        """The newest entries first, optionally only those whose fields equal `match`."""
        found: list[AuditEntry] = []
        last = "+"
        while len(found) < limit:
            batch = self.store.redis.xrevrange(self.key, max=last, count=500)
            for entry_id, raw in batch:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                if all(fields.get(k) == v for k, v in match.items()):
                    found.append(
                        AuditEntry(
                            id=entry_id.decode(),
                            at=float(fields["at"]),
                            who=fields["who"],
                            action=fields["action"],
                            kind=fields["kind"],
                            key=fields["key"],
                            revision=int(fields["revision"]),
                            before=json.loads(fields["before"]),
                            after=json.loads(fields["after"]),
                        )
                    )
            if len(batch) < 500:
                break
            last = "(" + batch[-1][0].decode()
        return found[:limit]


def _bounded(document: dict[str, Any] | None) -> str:
    """The document as JSON, or, over `MAX_DOCUMENT_BYTES`, its size and SHA-256."""
    raw = json.dumps(document)
    if len(raw) <= MAX_DOCUMENT_BYTES:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()
    return json.dumps({"truncated": True, "bytes": len(raw), "sha256": digest})
