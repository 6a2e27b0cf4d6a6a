"""What an l4 agent holds in Redis: its node, and the virtual services openslb made on it;
and, on the node's own disk, what it last applied.

The node lock (`P:l4:NODE:lock`) makes one agent the node's only programmer: `slb
l4-agent` and a node's Celery worker must not both program one kernel (drains and health
checks live in the agent).

The ownership record (`P:l4:NODE:owned`, a set of service keys like `TCP/198.18.0.10/80`)
is in Redis rather than a state file because it survives the node's disk as well as an
agent restart, the console can show it, and the agent needs Redis anyway; the agent writes
it ahead of creating services, so a crash never leaves a service openslb made but does not
own. A copy goes into the local record after each apply (`slb.integrity.AppliedRecord`): a
store lost or restored from an older copy loses the ownership record with it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Collection

import redis

from l4.ipvs import ServiceKey
from slb.storage.store import Store

log = logging.getLogger(__name__)

LOCK_TTL_S = 30.0
"""A dead agent's node lock expires after this long."""


class AgentError(RuntimeError):
    """The agent cannot go on: it cannot tell what to program (e.g. which node group it
    serves), or another agent programs the node."""


class NodeTakenError(AgentError):
    """Another agent holds the node's lock: a live one, or a dead one's until it expires."""


class Ownership:
    """Which virtual services openslb made on this node, kept in Redis."""

    def __init__(self, store: Store, node: str) -> None:
        self.store = store
        self.key = store.key("l4", node, "owned")

    def load(self) -> set[ServiceKey]:
        return {ServiceKey.decode(m.decode()) for m in self.store.redis.smembers(self.key)}

    def add(self, keys: Collection[ServiceKey]) -> None:
        if keys:
            self.store.redis.sadd(self.key, *(k.encode() for k in keys))

    def remove(self, keys: Collection[ServiceKey]) -> None:
        if keys:
            self.store.redis.srem(self.key, *(k.encode() for k in keys))


class NodeLock:
    """One agent per LB node: a Redis lock with an owner token and an expiry.

    The holder renews the lock from a thread of its own (`hold`), so an apply that takes
    longer than `ttl_s` never lets it lapse; a holder that dies loses it after `ttl_s`; only
    the holder can renew or release it.
    """

    _RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"""
    _RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) end return 0"""

    def __init__(self, store: Store, node: str, ttl_s: float = LOCK_TTL_S) -> None:
        self.redis = store.redis
        self.key = store.key("l4", node, "lock")
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = self.redis.register_script(self._RENEW)
        self._release = self.redis.register_script(self._RELEASE)
        self.lost = False
        """Another agent took the lock while this one held it (after a pause past `ttl_s`)."""
        self._held = threading.Event()

    def acquire(self) -> None:
        """Take the lock, or raise NodeTakenError naming who holds it."""
        if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms) or self.renew():
            self.lost = False
            return
        holder = (self.redis.get(self.key) or b"?").decode()
        raise NodeTakenError(f"another l4 agent programs this node ({holder}); not starting")

    def hold(self) -> None:
        """Take the lock (NodeTakenError if another agent has it) and keep it until `release`."""
        self.acquire()
        self._held = held = threading.Event()
        threading.Thread(target=self._keep, args=(held,), name="node-lock", daemon=True).start()

    def _keep(self, released: threading.Event) -> None:
        """Renew the lock every third of its lifetime until released; take it back if it
        lapsed (the process was paused), or mark it `lost` if another agent has it."""
        while not released.wait(self.ttl_ms / 3000):
            try:
                if not self.renew():
                    self.acquire()
            except NodeTakenError as exc:
                self.lost = True
                log.error("%s: this agent no longer programs the node", exc)
            except redis.RedisError as exc:  # an outage: the lock lives on until it expires
                log.warning("cannot renew the node lock: %s", exc)

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        self._held.set()
        self._release(keys=[self.key], args=[self.token])
