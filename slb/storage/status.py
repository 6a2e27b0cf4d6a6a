"""What each data plane has programmed: the revision, when, and the last error.

Every l4 agent and every Envoy (through the xDS server) reports here after an apply;
cmi turns these into Service conditions and Events, and the console shows them next to
the desired revision. Kept apart from the desired state: reporting is not a change.

The leading cmi beats here too, so the console can say whether a controller is alive.

Layout: an LB node writes only keys of its own (its Redis user may write no other):
`P:l4:NODE:status` (JSON of `TierStatus`) and `P:l4:NODE:alarm`, and adds its name to the
set `P:status:l4-nodes` (its user may only SADD there: it can neither forge nor hide
another node's report). The xDS server, the one writer of the L7 tier, keeps
`P:status:l7` (a hash, node -> JSON) and its alarm in `P:status:alarms`; `P:status:cmi`
is the JSON of the leader's `ControllerBeat`.
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
    one: an entry may be forged or malformed (by a node taken over, or a stale writer), and
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
        text = json.dumps(asdict(status))
        if tier == "l4":
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.set(self._node_key(node, "status"), text)
            pipe.sadd(self._nodes_key, node)
            pipe.execute()
        else:
            self.store.redis.hset(self.store.key("status", tier), node, text)
        return status

    def forget(self, tier: Tier, node: str) -> None:
        if tier == "l4":
            self.store.redis.delete(self._node_key(node, "status"), self._node_key(node, "alarm"))
            self.store.redis.srem(self._nodes_key, node)
        else:
            self.store.redis.hdel(self.store.key("status", tier), node)

    def all(self, tier: Tier) -> dict[str, TierStatus]:
        if tier == "l4":
            found = self._of_nodes("status")
        else:
            raw = self.store.redis.hgetall(self.store.key("status", tier))
            found = {k.decode(errors="replace"): v for k, v in raw.items()}
        parsed = {node: _parse_status(tier, node, v) for node, v in found.items()}
        return {node: status for node, status in parsed.items() if status is not None}

    @property
    def _nodes_key(self) -> str:
        return self.store.key("status", "l4-nodes")

    def _node_key(self, node: str, what: str) -> str:
        return self.store.key("l4", node, what)

    def _of_nodes(self, what: str) -> dict[str, bytes]:
        """Node -> its own key `what`, for every node that ever reported (one round trip
        for the names, one for the values)."""
        nodes = sorted(
            n.decode(errors="replace") for n in self.store.redis.smembers(self._nodes_key)
        )
        if not nodes:
            return {}
        values = self.store.redis.mget([self._node_key(n, what) for n in nodes])
        return {n: v for n, v in zip(nodes, values, strict=True) if v is not None}

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

    def l4_alarm(self, node: str, why: str | None) -> None:
        """`alarm` for LB node `node`'s agent, in a key of the node's own."""
        if why is None:
            self.store.redis.delete(self._node_key(node, "alarm"))
            return
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.set(self._node_key(node, "alarm"), why)
        pipe.sadd(self._nodes_key, node)
        pipe.execute()

    @staticmethod
    def node_alarm(node: str) -> str:
        """The consumer name of LB node `node`'s agent in `alarms` (the xDS server's: "xds")."""
        return f"l4 {node}"

    def alarms(self) -> dict[str, str]:
        """Consumer -> why it holds its last good state (`slb.integrity`)."""
        held = self.store.redis.hgetall(self.store.key("status", "alarms"))
        raw = {k.decode(errors="replace"): v for k, v in held.items()}
        raw.update({self.node_alarm(n): v for n, v in self._of_nodes("alarm").items()})
        return {k: v.decode(errors="replace")[:MAX_ERROR_CHARS] for k, v in raw.items()}
