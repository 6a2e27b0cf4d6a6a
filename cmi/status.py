"""What each data plane has programmed: the revision, when, and the last error.

Every l4 agent and every Envoy (through the xDS server) reports here after an apply;
cmi turns these into Service conditions and Events, and the console shows them next to
the desired revision. Kept apart from the desired state: reporting is not a change.

Layout: `P:status:TIER` is a hash, node -> JSON of `TierStatus`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Literal

from cmi.store import Store

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
