"""Each Envoy's view of its listeners' backends: healthy, failing its checks, or ejected.

Kubernetes readiness says whether a pod should get traffic; this says whether the load
balancer sends it any. `slb envoy-stats` (`l7/stats.py`), beside each Envoy, reads the
health flags of every host of openslb's clusters from the admin API and writes them here;
the console shows them in a listener's backend table.

Layout under the store prefix `P`:
  P:l7:NODE:hosts   hash, listener -> JSON {"time": T, "hosts": {"ADDRESS:PORT": STATE}},
                    rewritten whole at every sample (listeners gone lose their entry)

STATE is one of `STATES`. A node's entry older than `max_age_s` (its sampler or its
Envoy stopped) is not shown: an Envoy's view that is not current says nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from slb.storage.store import Store

HEALTHY = "healthy"
"""Envoy sends it requests."""
PENDING = "pending"
"""Not yet checked since Envoy learned of it: no requests until the first check passes."""
FAILING = "failing"
"""Failed Envoy's active health check (the listener's `health_check`)."""
EJECTED = "ejected"
"""Ejected by outlier detection (consecutive 5xx or gateway errors)."""
DEGRADED = "degraded"
"""Reported degraded: used only when no healthy host is left."""

STATES = (HEALTHY, PENDING, FAILING, EJECTED, DEGRADED)

DEFAULT_MAX_AGE_S = 60.0


class EnvoyHosts:
    def __init__(self, store: Store, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.store = store
        self.max_age_s = max_age_s

    def _key(self, node: str) -> str:
        return self.store.key("l7", node, "hosts")

    def write(self, node: str, now: float, hosts: Mapping[str, Mapping[str, str]]) -> None:
        """One sample of every listener's hosts (`hosts`: listener -> host -> state)."""
        key = self._key(node)
        known = {k.decode() for k in self.store.redis.hkeys(key)}
        pipe = self.store.redis.pipeline(transaction=False)
        for listener, states in hosts.items():
            entry = {"time": now, "hosts": dict(states)}
            pipe.hset(key, listener, json.dumps(entry, separators=(",", ":")))
        for listener in known - hosts.keys():
            pipe.hdel(key, listener)
        pipe.execute()

    def of_listener(
        self, listener: str, nodes: Iterable[str], now: float
    ) -> dict[str, dict[str, str]]:
        """host -> node -> state, from every node in `nodes` with a current entry."""
        nodes = sorted(nodes)
        pipe = self.store.redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hget(self._key(node), listener)
        out: dict[str, dict[str, str]] = {}
        for node, raw in zip(nodes, pipe.execute(), strict=True):
            if raw is None:
                continue
            entry = json.loads(raw)
            if now - float(entry["time"]) > self.max_age_s:
                continue
            for host, state in entry["hosts"].items():
                out.setdefault(host, {})[node] = str(state)
        return out
