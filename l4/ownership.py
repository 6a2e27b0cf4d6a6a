"""What an l4 agent holds in Redis: its node, and the virtual services openslb made on it.

The node lock (`P:l4:NODE:lock`) makes one agent the node's only programmer: `slb
l4-agent` and a node's Celery worker must not both program one kernel (drains and health
checks live in the agent).

The ownership record (`P:l4:NODE:owned`, a set of service keys like `TCP/198.18.0.10/80`)
is in Redis rather than a state file because it survives the node's disk as well as an
agent restart, the console can show it, and the agent needs Redis anyway; the agent writes
it ahead of creating services, so a crash never leaves a service openslb made but does not
own.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection

from l4.ipvs import ServiceKey
from slb.storage.store import Store

LOCK_TTL_S = 30.0
"""A dead agent's node lock expires after this long."""


class AgentError(RuntimeError):
    """The agent cannot go on: it cannot tell what to program (e.g. which node group it
    serves), or another agent programs the node."""


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

    The holder renews the lock on every tick; a holder that dies loses it after `ttl_s`;
    only the holder can renew or release it.
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

    def acquire(self) -> None:
        """Take the lock, or raise AgentError naming who holds it."""
        if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms) or self.renew():
            return
        holder = (self.redis.get(self.key) or b"?").decode()
        raise AgentError(f"another l4 agent programs this node ({holder}); not starting")

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])
