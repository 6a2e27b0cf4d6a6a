"""What the pipeline's workers count: applies, their latency, failures (Prometheus), and
the number of applies per node in Redis, so a test can tell how many a burst cost."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from slb.model import NodeGroup
from slb.storage.store import Store

APPLIES = Counter(
    "openslb_applies_total", "Applies that changed or checked a data plane", ["tier", "node"]
)
APPLY_FAILURES = Counter("openslb_apply_failures_total", "Applies that failed", ["tier", "node"])
APPLY_SECONDS = Histogram(
    "openslb_apply_seconds",
    "How long an apply took",
    ["tier"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def applies_key(prefix: str, tier: str, node: str) -> str:
    return f"{prefix}:applies:{tier}:{node}"


def count_apply(tier: str, node: str, store: Store, seconds: float, *, ok: bool) -> None:
    """Count an apply, on the node's own Redis connection: a connection made per apply
    cost tens of milliseconds of each change in the emulated lab VM."""
    APPLIES.labels(tier, node).inc()
    APPLY_SECONDS.labels(tier).observe(seconds)
    if not ok:
        APPLY_FAILURES.labels(tier, node).inc()
    store.redis.incr(applies_key(store.prefix, tier, node))


class QueueDepth(Collector):
    """`openslb_queue_depth{queue}`: tasks waiting in each pipeline queue, read at scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from slb.pipeline import CONTROL_QUEUE, l4_queue  # noqa: PLC0415

        family = GaugeMetricFamily(
            "openslb_queue_depth", "Tasks waiting per queue", labels=["queue"]
        )
        queues = {CONTROL_QUEUE}
        for group in self.store.all(NodeGroup).values():
            queues.update(l4_queue(node.name) for node in group.obj.nodes)
        for queue in sorted(queues):
            depth = self.store.redis.llen(f"{self.store.prefix}:celery:{queue}")
            family.add_metric([queue], float(depth))
        yield family
