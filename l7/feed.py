"""The desired state as the xDS server sees it: a snapshot kept current from the change stream.

(And the one thing the server writes back beside status reports: the newest revision it
has published, `P:xds:published`, which the pipeline's `openslb.l7.apply` task checks.)

Re-reading the whole store on every change would cost seconds at 10,000 Services, so the
feed reads one snapshot, then for each batch of changes re-reads only the objects the
batch touched. Objects that did not change stay the very same Python objects, which is
what makes the translation cache's comparisons cheap. A batch holds every change
committed since the previous one, so a burst of writes costs one update, not one each.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import redis

from slb.snapshot import Snapshot
from slb.storage.store import CompactedError, Store

log = logging.getLogger("openslb.xds")


def record_published(store: Store, revision: int) -> None:
    """Note that the xDS server now serves `revision` (to every Envoy that is connected)."""
    store.redis.set(store.key("xds", "published"), revision)


def published_revision(store: Store) -> int:
    """The newest revision an xDS server has published; -1 if none has yet."""
    raw = store.redis.get(store.key("xds", "published"))
    return int(raw) if raw is not None else -1


def follow(
    store: Store, stop: threading.Event, block_ms: int = 1_000, retry_s: float = 1.0
) -> Iterator[Snapshot | None]:
    """Yield the desired state now, then after every batch of changes, until `stop` is set.

    Yields None when `block_ms` passes without a change (a chance to do periodic work).
    Redis going away is waited out; a consumer left behind the stream's trim point starts
    again from a fresh snapshot.
    """
    snapshot: Snapshot | None = None
    while not stop.is_set():
        try:
            if snapshot is None:
                snapshot = store.snapshot()
                yield snapshot
            for batch in store.follow(snapshot.revision, block_ms=block_ms):
                if stop.is_set():
                    return
                if not batch:
                    yield None
                    continue
                snapshot = store.advance(snapshot, batch)
                yield snapshot
        except CompactedError as exc:
            log.warning("xds: %s; reading a fresh snapshot", exc)
            snapshot = None
        except redis.RedisError as exc:
            log.warning("xds: redis: %s; retrying in %.0f s", exc, retry_s)
            stop.wait(retry_s)
