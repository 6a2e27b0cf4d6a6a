"""Following the store: a position in its change stream, and a snapshot kept current by it.

Every reader of the desired state that lives longer than one request follows it the same
way, like a Kubernetes list + watch: a snapshot of the kinds it needs (or none, for a
reader that wants only to hear of revisions), then each batch of changes, applied with
`Store.advance` so that objects which did not change stay the very same Python objects
(the caches downstream compare by identity) and a batch costs what it touched.

A `Follower` is polled (one read that does not wait: the console per request, the l4
agent per Celery task) or iterated (`follow`: a long-lived thread that waits for changes,
steps on quietly now and then so it can do periodic work and see its stop event, and
waits out a Redis outage). Either way, a follower that cannot tell what changed, because
the stream was trimmed past it or more changes wait than it reads at once, takes a fresh
snapshot and says so: its step's `changes` is None, "everything may have changed". So
does a follower that finds the store behind it, or changes from another store (it was
emptied or restored meanwhile): what to make of that is `slb.integrity`'s to say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from slb.model import KINDS
from slb.snapshot import Change, Snapshot
from slb.storage import connect
from slb.storage.store import CompactedError, RewoundError, Store

log = logging.getLogger(__name__)

MAX_CHANGES = 10_000
"""Changes read at most at once; a step that finds this many waiting takes a fresh snapshot
instead, which costs less than catching up on more."""


@dataclass(frozen=True)
class Step:
    """Where one step left the follower, and what it moved past."""

    snapshot: Snapshot
    """The followed kinds at the follower's position (no objects if it follows no kinds)."""
    changes: list[Change] | None
    """The changes stepped past, oldest first; empty on a quiet step; None after a fresh
    snapshot, when everything may have changed."""

    @property
    def revision(self) -> int:
        return self.snapshot.revision

    @property
    def quiet(self) -> bool:
        """Nothing happened: the follower is where it was."""
        return self.changes is not None and not self.changes


class Follower:
    """One reader's position in the change stream, with its snapshot of `kinds`.

    Not thread-safe: one thread polls or iterates it at a time (share one under a lock).
    """

    def __init__(
        self,
        store: Store,
        kinds: Iterable[str] = KINDS,
        *,
        since: int | None = None,
        max_changes: int = MAX_CHANGES,
        retry_s: float = 1.0,
    ) -> None:
        """`since`: go on after that revision instead of starting from a fresh snapshot;
        only for a follower of no kinds (it holds no objects of that revision)."""
        self.store = store
        self.kinds = tuple(kinds)
        if since is not None and self.kinds:
            raise ValueError("a follower that starts at a revision holds no objects: kinds=()")
        self.max_changes = max_changes
        self.retry_s = retry_s
        self.snapshot: Snapshot | None = None if since is None else Snapshot(since)
        """Where the follower is; None until its first step (or after `reset`)."""

    def poll(self) -> Step:
        """One step that does not wait. Redis errors go to the caller (a request, a task)."""
        return self._step(block_ms=None)

    def follow(self, stop: threading.Event, block_ms: int = 1_000) -> Iterator[Step]:
        """Step until `stop` is set: each step waits up to `block_ms` for changes (keep it
        below the client's socket timeout), and a Redis outage is waited out, every
        `retry_s`, rather than raised."""
        done: list[Step] = []
        while connect.until_done(
            stop, lambda: done.append(self._step(block_ms)), retry_s=self.retry_s
        ):
            yield done.pop()

    def reset(self) -> None:
        """Read everything afresh at the next step (a periodic repair, say)."""
        self.snapshot = None

    def _step(self, block_ms: int | None) -> Step:
        if self.snapshot is None:
            return self._fresh()
        try:
            changes = self.store.changes(
                self.snapshot.revision, limit=self.max_changes, block_ms=block_ms
            )
        except (CompactedError, RewoundError) as exc:
            log.warning("%s; reading a fresh snapshot", exc)
            return self._fresh()
        known = self.snapshot.store_id
        if known is None and changes:  # a store's first write, or a follower from `since`
            known = changes[0].store_id
            self.snapshot = replace(self.snapshot, store_id=known)
        if any(c.store_id != known for c in changes):
            log.warning("changes from another store (it was emptied or replaced; revision %d, "
                        "store %s); reading a fresh snapshot", changes[-1].revision,
                        changes[-1].store_id)  # fmt: skip
            return self._fresh()
        if len(changes) >= self.max_changes:
            log.info("%d changes or more to read; reading a fresh snapshot", len(changes))
            return self._fresh()
        self.snapshot = self.store.advance(self.snapshot, changes)
        return Step(self.snapshot, changes)

    def _fresh(self) -> Step:
        self.snapshot = self.store.snapshot(self.kinds)
        return Step(self.snapshot, None)
