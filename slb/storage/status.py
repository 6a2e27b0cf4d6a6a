"""What each data plane has programmed: the revision, when, and the last error.

Every l4 agent and every Envoy (through the xDS server) reports here after an apply;
cmi turns these into Service conditions and Events, and the console shows them next to
the desired revision. Kept apart from the desired state: reporting is not a change.

The leading cmi beats here too, so the console can say whether a controller is alive.

Layout: `P:status:TIER` is a hash, node -> JSON of `TierStatus`; `P:status:cmi` is the
JSON of the leader's `ControllerBeat`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Literal

from slb.storage.store import Store

Tier = Literal["l4", "l7"]


@dataclass(frozen=True)
class TierStatus:
    tier: Tier
    node: str
    """The LB node (l4) or the Envoy's node id (l7)."""
    group: str
    revision: int
    """The newest desired revision this node serves."""
    updated_at: float
    error: str | None = None
    """Why the newest attempt failed (netlink error, Envoy NACK), if it did."""
    error_revision: int | None = None


@dataclass(frozen=True)
class ControllerBeat:
    identity: str
    epoch: int
    """The Lease's transition count when it took over (its fencing token)."""
    revision: int
    """The newest desired revision it wrote or read."""
    at: float

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.at)


BEAT_S = 2.0
"""How often the leading cmi beats; the console calls it silent after a few missed."""


class StatusBoard:
    def __init__(self, store: Store) -> None:
        self.store = store

    def report(
        self,
        tier: Tier,
        node: str,
        group: str,
        revision: int,
        *,
        error: str | None = None,
        error_revision: int | None = None,
    ) -> TierStatus:
        status = TierStatus(tier, node, group, revision, time.time(), error, error_revision)
        self.store.redis.hset(self.store.key("status", tier), node, json.dumps(asdict(status)))
        return status

    def forget(self, tier: Tier, node: str) -> None:
        self.store.redis.hdel(self.store.key("status", tier), node)

    def all(self, tier: Tier) -> dict[str, TierStatus]:
        raw = self.store.redis.hgetall(self.store.key("status", tier))
        return {k.decode(): TierStatus(**json.loads(v)) for k, v in raw.items()}

    def controller_beat(self, identity: str, epoch: int, revision: int) -> None:
        beat = ControllerBeat(identity, epoch, revision, time.time())
        self.store.redis.set(self.store.key("status", "cmi"), json.dumps(asdict(beat)))

    def controller(self) -> ControllerBeat | None:
        """The last beat of a leading cmi; None if none ever led."""
        raw = self.store.redis.get(self.store.key("status", "cmi"))
        return ControllerBeat(**json.loads(raw)) if raw else None

    def alarm(self, consumer: str, why: str | None) -> None:
        """A consumer holds its last good state (why), or no longer does (None)."""
        key = self.store.key("status", "alarms")
        if why is None:
            self.store.redis.hdel(key, consumer)
        else:
            self.store.redis.hset(key, consumer, why)

    @staticmethod
    def node_alarm(node: str) -> str:
        """The alarm key of LB node `node`'s agent (the xDS server's is "xds")."""
        return f"l4 {node}"

    def alarms(self) -> dict[str, str]:
        """Consumer -> why it holds its last good state (`slb.integrity`)."""
        raw = self.store.redis.hgetall(self.store.key("status", "alarms"))
        return {k.decode(): v.decode() for k, v in raw.items()}
