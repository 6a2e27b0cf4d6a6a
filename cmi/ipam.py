"""VIP allocation: stable, sticky, never handed out twice, released only after a grace period.

Allocations live in Redis next to the desired state, so they survive restarts of cmi and
are shared by every cmi process. Each claim is one Lua script (HSETNX on the address), so
two processes racing for addresses can never both win the same one, even without the
leader lease. A released address stays held by its instance for a grace period: an
instance that comes back in time (a Service relabelled, cmi restarted) gets the same VIP.

Layout under the store prefix P:
  P:ipam:owner     hash, instance -> its current address
  P:ipam:addr      hash, address -> instance holding it (current or in grace)
  P:ipam:released  hash, address -> unix time it was released
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import time
from collections.abc import Iterable, Iterator

from slb.model import AddressPool, IPAddress
from slb.model.infra import host_range
from slb.storage.store import Store

CANDIDATES_PER_TRY = 32
TRIES = 20


class IPAMError(Exception):
    """An address cannot be allocated; the message says why, for an Event."""


_CLAIM = """
local owner_key, addr_key, released_key = KEYS[1], KEYS[2], KEYS[3]
local instance, requested, now = ARGV[1], ARGV[2], ARGV[3]
local candidates = cjson.decode(ARGV[4])
local current = redis.call('HGET', owner_key, instance)
if requested ~= '' then
  local holder = redis.call('HGET', addr_key, requested)
  if holder and holder ~= instance then
    return {'taken', holder}
  end
  redis.call('HSET', addr_key, requested, instance)
  redis.call('HDEL', released_key, requested)
  if current and current ~= requested then
    redis.call('HSET', released_key, current, now)
  end
  redis.call('HSET', owner_key, instance, requested)
  return {'ok', requested}
end
if current then
  redis.call('HDEL', released_key, current)
  return {'ok', current}
end
for _, address in ipairs(candidates) do
  if redis.call('HSETNX', addr_key, address, instance) == 1 then
    redis.call('HSET', owner_key, instance, address)
    return {'ok', address}
  end
end
return {'retry', ''}
"""

_EXPIRE = """
local owner_key, addr_key, released_key = KEYS[1], KEYS[2], KEYS[3]
local deadline = tonumber(ARGV[1])
local freed = {}
local released = redis.call('HGETALL', released_key)
for i = 1, #released, 2 do
  local address, at = released[i], tonumber(released[i + 1])
  if at <= deadline then
    local instance = redis.call('HGET', addr_key, address)
    redis.call('HDEL', addr_key, address)
    redis.call('HDEL', released_key, address)
    if instance and redis.call('HGET', owner_key, instance) == address then
      redis.call('HDEL', owner_key, instance)
    end
    freed[#freed + 1] = {instance or '', address}
  end
end
return cjson.encode(freed)
"""


class IPAM:
    def __init__(self, store: Store) -> None:
        self.redis = store.redis
        self.keys = [
            store.key("ipam", "owner"),
            store.key("ipam", "addr"),
            store.key("ipam", "released"),
        ]
        self._claim = self.redis.register_script(_CLAIM)
        self._expire = self.redis.register_script(_EXPIRE)
        self._held: set[tuple[int, int]] | None = None
        """Addresses known to be held: a hint for picking candidates, never trusted (the
        script is); refreshed whenever a claim finds the hint stale."""

    def allocate(
        self, instance: str, pools: Iterable[AddressPool], requested: IPAddress | None = None
    ) -> IPAddress:
        """The instance's address: its current one, the requested one, or a free one.

        `pools` are where it may come from (its pool; for a requested address, any pool).
        """
        pools = list(pools)
        if requested is not None and not any(p.offers(requested) for p in pools):
            names = ", ".join(p.name for p in pools) or "none"
            raise IPAMError(
                f"{requested} is outside every address pool or reserved (pools: {names})"
            )
        if requested is None and (current := self._claim_current(instance)) is not None:
            return current  # the usual case: no free address looked for
        for attempt in range(TRIES):
            if self._held is None or attempt > 0:
                self._held = {_number(a.decode()) for a in self.redis.hkeys(self.keys[1])}
            candidates = (
                []
                if requested
                else list(itertools.islice(_free(pools, self._held), CANDIDATES_PER_TRY))
            )
            status, value = (
                part.decode()
                for part in self._claim(
                    keys=self.keys,
                    args=[instance, str(requested or ""), time.time(), json.dumps(candidates)],
                )
            )
            if status == "ok":
                self._held.add(_number(value))
                return ipaddress.ip_address(value)
            if status == "taken":
                raise IPAMError(f"{requested} is already the VIP of instance {value!r}")
            if not candidates:
                names = ", ".join(p.name for p in pools)
                raise IPAMError(f"no free address left in pool(s) {names}")
        raise IPAMError("could not claim an address: too much contention, will retry")

    def _claim_current(self, instance: str) -> IPAddress | None:
        """The instance's current address, kept out of its grace; None if it has none."""
        status, value = (
            part.decode()
            for part in self._claim(keys=self.keys, args=[instance, "", time.time(), "[]"])
        )
        return ipaddress.ip_address(value) if status == "ok" else None

    def reserve(self, instance: str, address: IPAddress) -> bool:
        """Hold `address` for `instance`, which has none, if no other instance holds it; from
        any pool (an operator's pool may be lost with the store). Whether it is held now."""
        if self.current(instance) is not None:
            return False
        status, _ = (
            part.decode()
            for part in self._claim(
                keys=self.keys, args=[instance, str(address), time.time(), "[]"]
            )
        )
        self._held = None
        return bool(status == "ok")

    def current(self, instance: str) -> IPAddress | None:
        value = self.redis.hget(self.keys[0], instance)
        return ipaddress.ip_address(value.decode()) if value else None

    def release(self, instance: str) -> IPAddress | None:
        """Start the grace period of the instance's address; it stays held until `expire`."""
        address = self.current(instance)
        if address is not None:
            self.redis.hsetnx(self.keys[2], str(address), time.time())
        return address

    def expire(self, grace_s: float) -> list[tuple[str, IPAddress]]:
        """Free every address released more than `grace_s` ago; return (instance, address)."""
        freed = json.loads(self._expire(keys=self.keys, args=[time.time() - grace_s]))
        if freed:
            self._held = None
        return [(instance, ipaddress.ip_address(address)) for instance, address in freed]

    def allocations(self) -> dict[str, IPAddress]:
        """Every instance's current address."""
        raw = self.redis.hgetall(self.keys[0])
        return {k.decode(): ipaddress.ip_address(v.decode()) for k, v in raw.items()}


def _number(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def _free(pools: Iterable[AddressPool], held: set[tuple[int, int]]) -> Iterator[str]:
    """Unheld host addresses of the pools, in order (integers until one is chosen: fast)."""
    for pool in pools:
        reserved = {(a.version, int(a)) for a in pool.reserved}
        for network in pool.cidrs:
            first, last = host_range(network)
            make = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
            for number in range(first, last + 1):
                candidate = (network.version, number)
                if candidate not in held and candidate not in reserved:
                    yield str(make(number))
