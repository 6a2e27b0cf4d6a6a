"""What each data plane has programmed: the revision, when, and the last error.

Every l4 agent and every Envoy (through the xDS server) reports here after an apply;
cmi turns these into Service conditions and Events, and the console shows them next to
the desired revision. Kept apart from the desired state: reporting is not a change.

The leading cmi beats here too, so the console can say whether a controller is alive.

Layout: `P:status:TIER` is a hash, node -> JSON of `TierStatus`; `P:status:cmi` is the
JSON of the leader's `ControllerBeat`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from slb.storage.store import Store

log = logging.getLogger(__name__)

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


MAX_ERROR_CHARS = 4096
"""A reported error longer than this is cut (a report is a line for the operator)."""


def _parse_status(tier: Tier, node: str, raw: bytes) -> TierStatus | None:
    """A status entry as written by `StatusBoard.report`, or None (said once) if it is not
    one: the hash is writable by every LB node, so an entry may be forged or malformed, and
    must never stop cmi's readiness check or a console page."""
    try:
        status = _STATUS.validate_json(raw, strict=True)
        if status.tier != tier or status.node != node:
            raise ValueError(f"an entry of {status.tier} node {status.node!r}")
        if not math.isfinite(status.updated_at) or status.revision < 0:
            raise ValueError("updated_at or revision out of range")
    except (ValidationError, ValueError) as exc:
        _say_once(f"ignoring the {tier} status of {node!r}: not a status report ({exc})", raw)
        return None
    if status.error is not None and len(status.error) > MAX_ERROR_CHARS:
        status = replace(status, error=status.error[:MAX_ERROR_CHARS] + "...")
    return status


_STATUS = TypeAdapter(TierStatus)
_said: set[str] = set()


def _say_once(message: str, raw: bytes) -> None:
    digest = hashlib.sha256(message.encode() + raw).hexdigest()
    if digest not in _said:
        if len(_said) > 10_000:
            _said.clear()
        _said.add(digest)
        log.warning("%s", message[:500])


BEAT_S = 2.0
"""How often the leading cmi beats; the console calls it silent after a few missed."""


_BEAT = TypeAdapter(ControllerBeat)


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
        found = {k.decode(errors="replace"): v for k, v in raw.items()}
        parsed = {node: _parse_status(tier, node, v) for node, v in found.items()}
        return {node: status for node, status in parsed.items() if status is not None}

    def controller_beat(self, identity: str, epoch: int, revision: int) -> None:
        beat = ControllerBeat(identity, epoch, revision, time.time())
        self.store.redis.set(self.store.key("status", "cmi"), json.dumps(asdict(beat)))

    def controller(self) -> ControllerBeat | None:
        """The last beat of a leading cmi; None if none ever led."""
        raw = self.store.redis.get(self.store.key("status", "cmi"))
        if not raw:
            return None
        try:
            return _BEAT.validate_json(raw, strict=True)
        except ValidationError as exc:
            _say_once(f"ignoring the controller's beat: not one ({exc})", raw)
            return None

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
        return {k.decode(errors="replace"): v.decode(errors="replace")[:MAX_ERROR_CHARS]
                for k, v in raw.items()}  # fmt: skip
