"""Fail static: a consumer of the desired state never takes a lost or rewound store for an
order to serve less.

Redis restarted without its data, restored from an older backup, a node pointed at the wrong
prefix or database: each looks like a desired state with less in it, and a consumer that
applied it would tear down what serves traffic. Each store has an identity, made by its
first write; each consumer remembers what it applied (`Applied`: the store's identity, the
revision, cmi's mark then), and `check` says whether a snapshot may be applied. A store that
is empty, is another one, or went back is held off: the consumer keeps serving what it has
and raises an alarm, until cmi has rebuilt the store from Kubernetes and marked it synced
(`Store.mark_synced`), or an operator adopts it (`slb store adopt`).

Reductions of a healthy store (a Service unlabelled) apply at once: the rule is about the
store's integrity, not about deletions. A rebuilt store is the exception: cmi rebuilds only
what Kubernetes holds, so objects operators made (node groups, instances, listeners) are
lost with the store; a rebuilt or rewound store that would take more than half of what a
consumer serves off it waits for an operator (`removal_held`), as PyBal refuses to depool
more than a share of a pool. Pure but for `AppliedRecord`, a consumer's memory on its own
disk: the l4 agent and the xDS server each hold a `Guard` and a record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from slb.snapshot import Snapshot

T = TypeVar("T")

log = logging.getLogger(__name__)

HOLDING = "holding: "
"""How a consumer's status report begins while it keeps its last good state."""


@dataclass(frozen=True)
class Applied:
    """What a consumer last applied: from which store, at which revision, under which mark."""

    store_id: str
    revision: int
    synced_at: float
    """The time of cmi's mark on the store then (0: none)."""


def check(snapshot: Snapshot, applied: Applied | None) -> str | None:
    """None if `snapshot` may be applied by a consumer that last applied `applied`, else why
    not, in words for the operator."""
    if snapshot.store_id is None:
        return (
            "the store is empty: nothing wrote it since it was created or emptied (Redis "
            "restarted without its data, or the wrong redis.prefix or database?)"
        )
    if snapshot.syncing == snapshot.store_id:
        return f"cmi is rebuilding store {snapshot.store_id} from Kubernetes"
    if applied is None:
        return None  # a consumer that serves nothing yet has nothing to lose
    synced = snapshot.synced
    rebuilt = synced is not None and synced.store_id == snapshot.store_id
    if snapshot.store_id != applied.store_id and not rebuilt:
        return (
            f"the store is not the one served from (store {snapshot.store_id}, served "
            f"{applied.store_id} at revision {applied.revision}): waiting for cmi to rebuild "
            "it, or for `slb store adopt`"
        )
    if snapshot.revision < applied.revision and not (
        rebuilt and synced is not None and synced.at > applied.synced_at
    ):
        return (
            f"the store went back to revision {snapshot.revision} from {applied.revision} "
            "(restored from an older copy?): waiting for cmi to rebuild it, or for "
            "`slb store adopt`"
        )
    return None


def resumed(snapshot: Snapshot, applied: Applied | None) -> bool:
    """Is `snapshot` a rebuilt or rewound store (of another identity, or behind what the
    consumer applied), rather than the next step of the one it applied?"""
    return applied is not None and (
        snapshot.store_id != applied.store_id or snapshot.revision < applied.revision
    )


def removal_held(
    snapshot: Snapshot, applied: Applied | None, served: int, kept: int, what: str = "services"
) -> str | None:
    """None if a consumer serving `served` things may go to `kept` on `snapshot`, else why
    not. Only a rebuilt or rewound store is bounded, and an operator's adoption lifts it."""
    removed = served - kept
    if not resumed(snapshot, applied) or removed * 2 <= served:
        return None
    synced, served_at = snapshot.synced, applied.synced_at if applied else 0.0
    if synced and synced.adopted and synced.store_id == snapshot.store_id and synced.at > served_at:
        return None  # an operator adopted the store since the consumer last applied
    return (
        f"the rebuilt store would take {removed} of the {served} {what} served off (objects "
        "operators made, lost with the store?): restore them, or adopt the store as it is "
        "with `slb store adopt`"
    )


def applied_from(snapshot: Snapshot, before: Applied | None) -> Applied:
    """What a consumer remembers after applying `snapshot`."""
    synced = snapshot.synced
    synced_at = synced.at if synced and synced.store_id == snapshot.store_id else 0.0
    if before is not None and before.store_id == snapshot.store_id:
        synced_at = max(synced_at, before.synced_at)
    return Applied(snapshot.store_id or "", snapshot.revision, synced_at)


class Guard:
    """A consumer's memory of the store it applies from, and its alarm.

    `sound` is told the alarm at every held step (the store it writes to may have been
    emptied since) and once when it clears (None): the consumer puts it where operators look.
    """

    def __init__(
        self,
        consumer: str,
        sound: Callable[[str | None], None] | None = None,
        serves: str = "services",
    ) -> None:
        self.consumer = consumer
        self.serves = serves
        """What the consumer serves, in the alarm's words (IPVS services, L7 listeners)."""
        self.sound = sound
        self.applied: Applied | None = None
        self.alarm: str | None = None
        """Why the consumer holds its last good state now; None while it follows the store."""

    def admit(
        self, snapshot: Snapshot, removal: Callable[[], tuple[int, int]] | None = None
    ) -> bool:
        """May `snapshot` be applied? Logs when the answer changes. `removal` counts what
        the consumer serves and what it would keep; it is asked only of a rebuilt store."""
        why = check(snapshot, self.applied)
        if why is None and removal is not None and resumed(snapshot, self.applied):
            why = removal_held(snapshot, self.applied, *removal(), what=self.serves)
        if why is None and self.alarm is not None:
            log.warning("%s: the store can be trusted again (%s, revision %d); applying it",
                        self.consumer, snapshot.store_id, snapshot.revision)  # fmt: skip
        elif why is not None and why != self.alarm:
            log.error("%s: keeping the last good state: %s", self.consumer, why)
        if self.sound is not None and (why is not None or self.alarm is not None):
            self.sound(why)
        self.alarm = why
        return why is None

    def applied_now(self, snapshot: Snapshot) -> None:
        self.applied = applied_from(snapshot, self.applied)


class AppliedRecord:
    """What a consumer last applied (`Applied`) and the names of what it served then, in a
    local file.

    Not in Redis: it is how a restarted consumer knows that the store it finds was emptied,
    replaced or rewound since, which Redis itself cannot say, and what it served when that
    went with the store. Written after every apply; a record that cannot be read counts as
    none (the consumer then holds only an empty store).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._served: frozenset[Any] = frozenset()
        self._served_json = "[]"
        """The last `served` and its names as JSON: most applies change no name, and then
        the record costs what `applied` costs, not a name per service."""

    def load(self) -> tuple[Applied | None, set[str]]:
        try:
            record = json.loads(self.path.read_text())
            served = {str(name) for name in record["served"]}
            return Applied(**record["applied"]), served
        except FileNotFoundError:
            return None, set()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("cannot read %s (%s): starting with no memory of what was applied",
                      self.path, exc)  # fmt: skip
            return None, set()

    def save(
        self, applied: Applied | None, served: AbstractSet[T], name: Callable[[T], str] = str
    ) -> None:
        """Record `applied` and what was `served` then, each by its `name`."""
        if applied is None:
            return
        if served != self._served:
            self._served = frozenset(served)
            self._served_json = json.dumps(sorted(map(name, served)))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(
                f'{{"applied": {json.dumps(asdict(applied))}, "served": {self._served_json}}}'
            )
            partial.replace(self.path)
        except OSError as exc:
            log.warning("cannot record what was applied in %s: %s", self.path, exc)
