"""Clusters: one per listener (its default backends) and one per route.

Everything here depends on the listener's settings only, never on its backends, so an
endpoint change leaves every cluster byte-identical and only EDS is sent. Those settings
are gathered in a `ClusterShape`; listeners of the same shape share one prototype that
only needs its name filled in, which keeps translating 10,000 listeners fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2, range_pb2

from l7.translate import policy
from l7.translate.common import ads, cluster_parts, pack, seconds, trust, wire
from slb.model import (
    DEFAULT_EXPECTED_CODES,
    BackendProtocol,
    BackendTls,
    HealthCheck,
    HealthCheckType,
    Listener,
    Route,
)
from slb.resolve import ResolvedListener

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_SOCKET = "envoy.transport_sockets.tls"


def clusters(resolved: ResolvedListener) -> list[cluster_pb2.Cluster]:
    return [cluster_pb2.Cluster.FromString(raw) for _, raw in serialized_clusters(resolved)]


def serialized_clusters(resolved: ResolvedListener) -> list[tuple[str, bytes]]:
    """(name, serialized Cluster) for the listener's own cluster and each route's.

    The name is a cluster's field 1 and a shape's prototype holds every other field, so
    the name's bytes followed by the prototype's are the canonical serialization.
    """
    listener = resolved.listener
    rests: dict[object, bytes] = {}
    out = []
    for name, route, _ in cluster_parts(resolved):
        # a rule's cluster differs from the listener's only by the rule's own upstream
        upstream = (route.backend_protocol, route.grpc_only) if route is not None else None
        rest = rests.get(upstream)
        if rest is None:
            rest = rests[upstream] = _serialized_prototype(ClusterShape.of(listener, route))
        out.append((name, wire(1, name.encode()) + rest))
    return out


@dataclass(frozen=True)
class ClusterShape:
    """Every listener setting a cluster depends on, its name aside."""

    lb_policy: int
    health_check: HealthCheck | None
    http2: bool
    tls: bool
    idle_timeout_s: int
    backend_tls: BackendTls | None = None

    @classmethod
    def of(cls, listener: Listener, route: Route | None = None) -> ClusterShape:
        """The shape of the listener's own cluster, or of a rule's (its own upstream)."""
        tls = listener.route_upstream(route) is BackendProtocol.TLS
        return cls(
            lb_policy=policy.lb_policy(listener),
            health_check=listener.health_check,
            http2=listener.route_upstream_is_http2(route),
            tls=tls,
            idle_timeout_s=listener.idle_timeout_s,
            backend_tls=listener.backend_tls if tls else None,
        )


@functools.lru_cache(maxsize=1024)
def _serialized_prototype(shape: ClusterShape) -> bytes:
    raw: bytes = _prototype(shape).SerializeToString(deterministic=True)
    return raw


@functools.lru_cache(maxsize=1024)
def _prototype(shape: ClusterShape) -> cluster_pb2.Cluster:
    """A cluster without a name; shared, so only ever copied from."""
    c = cluster_pb2.Cluster(
        type=cluster_pb2.Cluster.EDS,
        lb_policy=shape.lb_policy,
        connect_timeout=seconds(policy.CONNECT_TIMEOUT_S),
        # An endpoint gone from EDS is gone now, not when its health check next fails.
        ignore_health_on_host_removal=True,
    )
    # A new endpoint (a pod Kubernetes just found Ready) waits for its first health check;
    # Envoy then holds the health change back up to its merge window (1 s by default) before
    # workers use the host. Deliver it at once: a new pod takes traffic ~100 ms sooner than
    # 1 s, and health changes are rare (not the noisy stream the window is for).
    c.common_lb_config.update_merge_window.CopyFrom(seconds(0))
    c.eds_cluster_config.eds_config.CopyFrom(ads())
    c.per_connection_buffer_limit_bytes.value = policy.BUFFER_LIMIT_BYTES
    c.circuit_breakers.CopyFrom(_circuit_breakers())
    c.outlier_detection.CopyFrom(_outlier_detection())
    if shape.health_check is not None:
        c.health_checks.append(_health_check(shape.health_check, shape.http2))
    c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(_http_options(shape)))
    if shape.tls:
        tls = tls_pb2.UpstreamTlsContext()
        if shape.http2:
            tls.common_tls_context.alpn_protocols.append("h2")
        checks = shape.backend_tls
        if checks is not None and checks.sni is not None:
            tls.sni = checks.sni
        if checks is not None and checks.ca_pem is not None:
            names = (checks.sni,) if checks.sni is not None else ()
            trust(tls.common_tls_context.validation_context, checks.ca_pem, names)
        c.transport_socket.name = TLS_SOCKET
        c.transport_socket.typed_config.CopyFrom(pack(tls))
    return c


def _circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    breakers = circuit_breaker_pb2.CircuitBreakers()
    thresholds = breakers.thresholds.add(priority=base_pb2.DEFAULT)
    thresholds.max_connections.value = policy.IN_FLIGHT_CEILING
    thresholds.max_pending_requests.value = policy.IN_FLIGHT_CEILING
    thresholds.max_requests.value = policy.IN_FLIGHT_CEILING
    thresholds.retry_budget.budget_percent.value = policy.RETRY_BUDGET_PERCENT
    thresholds.retry_budget.min_retry_concurrency.value = policy.RETRY_MIN_CONCURRENCY
    thresholds.track_remaining = True
    return breakers


def _outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx={"value": policy.OUTLIER_CONSECUTIVE_5XX},
        consecutive_gateway_failure={"value": policy.OUTLIER_CONSECUTIVE_5XX},
        interval=seconds(policy.OUTLIER_INTERVAL_S),
        base_ejection_time=seconds(policy.OUTLIER_BASE_EJECTION_S),
        max_ejection_percent={"value": policy.OUTLIER_MAX_EJECTION_PERCENT},
    )


def _health_check(check: HealthCheck, http2: bool) -> health_check_pb2.HealthCheck:
    hc = health_check_pb2.HealthCheck(
        timeout=seconds(check.timeout_s),
        interval=seconds(check.interval_s),
        # Without traffic Envoy would check only once a minute; an LB checks steadily.
        no_traffic_interval=seconds(check.interval_s),
        healthy_threshold={"value": check.healthy_threshold},
        unhealthy_threshold={"value": check.unhealthy_threshold},
    )
    if check.type is HealthCheckType.TCP:
        hc.tcp_health_check.SetInParent()
    elif check.type is HealthCheckType.HTTP:
        http = hc.http_health_check
        http.path = check.path or "/"
        if http2:
            http.codec_client_type = http_pb2.HTTP2  # the backend speaks nothing else
        for start, end in _code_ranges(check.expected_codes or DEFAULT_EXPECTED_CODES):
            http.expected_statuses.append(range_pb2.Int64Range(start=start, end=end + 1))
    else:
        hc.grpc_health_check.service_name = check.grpc_service or ""
    return hc


def _code_ranges(expected: str) -> list[tuple[int, int]]:
    """'200,301-302' -> [(200, 200), (301, 302)] (Envoy's ranges end one past)."""
    ranges = []
    for part in expected.split(","):
        start, _, end = part.partition("-")
        ranges.append((int(start), int(end or start)))
    return ranges


def _http_options(shape: ClusterShape) -> http_protocol_options_pb2.HttpProtocolOptions:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.common_http_protocol_options.idle_timeout.CopyFrom(seconds(shape.idle_timeout_s))
    explicit = options.explicit_http_config
    if shape.http2:
        h2 = explicit.http2_protocol_options
        h2.max_concurrent_streams.value = policy.UPSTREAM_MAX_STREAMS
        h2.connection_keepalive.CopyFrom(
            protocol_pb2.KeepaliveSettings(interval=seconds(30), timeout=seconds(10))
        )
    else:
        explicit.http_protocol_options.SetInParent()
    return options
