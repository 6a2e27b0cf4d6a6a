"""The xDS server's Prometheus metrics, in a registry of its own (one per server)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.streams = Gauge(
            "openslb_xds_streams", "Connected Envoy ADS streams", ["group", "mode"], registry=r
        )
        self.responses = Counter(
            "openslb_xds_responses", "Responses sent to Envoys", ["type", "mode"], registry=r
        )
        self.acks = Counter("openslb_xds_acks", "Responses Envoys accepted", ["type"], registry=r)
        self.nacks = Counter(
            "openslb_xds_nacks",
            "Responses Envoys rejected (NACK); the last good configuration stays in force",
            ["group", "type"],
            registry=r,
        )
        self.revision = Gauge(
            "openslb_xds_revision", "Desired-state revision being served", registry=r
        )
        self.revision.set(-1)
        self.translate_seconds = Histogram(
            "openslb_xds_translate_seconds",
            "Time to translate the desired state into Envoy resources",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.refused = Counter(
            "openslb_xds_refused_streams",
            "Streams refused: the client certificate or node group does not match the node",
            ["reason"],
            registry=r,
        )
        self.problems = Gauge(
            "openslb_xds_problems", "Listeners that cannot be served as desired", registry=r
        )
        self.private_keys = Gauge(
            "openslb_xds_private_keys",
            "Private keys held in memory: those of the certificates the served listeners use",
            registry=r,
        )
        self.store_held = Gauge(
            "openslb_xds_store_held",
            "1 while the server keeps serving its last good state: the store is empty, another "
            "one, or went back (the log says which)",
            registry=r,
        )
