"""How listener settings map onto Envoy's load balancing, limits, retries and health.

Schedulers are IPVS's names (the L4 tier programs them as they are); at L7 each maps onto
the Envoy policy with the same intent:

| scheduler | Envoy lb_policy | weights |
| --- | --- | --- |
| rr, fo, ovf | ROUND_ROBIN | rr: equal; fo, ovf: the backends' |
| wrr | ROUND_ROBIN | the backends' |
| lc | LEAST_REQUEST | equal |
| wlc, sed, nq | LEAST_REQUEST | the backends' |
| sh, dh, lblc, lblcr | RING_HASH on the client's source IP | the backends' |
| mh | MAGLEV on the client's source IP | the backends' |
| random | RANDOM | equal |

Persistence overrides the scheduler's policy: `source_ip` and `cookie` need a consistent
hash, so they use MAGLEV when the scheduler is `mh` and RING_HASH otherwise, hashing the
source IP or an Envoy-issued cookie.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from slb.model import Listener, PersistenceMode, Scheduler

Cluster = cluster_pb2.Cluster

LB_POLICY: dict[Scheduler, int] = {
    Scheduler.RR: Cluster.ROUND_ROBIN,
    Scheduler.WRR: Cluster.ROUND_ROBIN,
    Scheduler.FO: Cluster.ROUND_ROBIN,
    Scheduler.OVF: Cluster.ROUND_ROBIN,
    Scheduler.LC: Cluster.LEAST_REQUEST,
    Scheduler.WLC: Cluster.LEAST_REQUEST,
    Scheduler.SED: Cluster.LEAST_REQUEST,
    Scheduler.NQ: Cluster.LEAST_REQUEST,
    Scheduler.SH: Cluster.RING_HASH,
    Scheduler.DH: Cluster.RING_HASH,
    Scheduler.LBLC: Cluster.RING_HASH,
    Scheduler.LBLCR: Cluster.RING_HASH,
    Scheduler.MH: Cluster.MAGLEV,
    Scheduler.RANDOM: Cluster.RANDOM,
}

UNWEIGHTED = frozenset({Scheduler.RR, Scheduler.LC, Scheduler.RANDOM})
"""Schedulers that, like their IPVS namesakes, ignore the backends' weights."""

HASHED = frozenset({Cluster.RING_HASH, Cluster.MAGLEV})


def lb_policy(listener: Listener) -> int:
    policy: int = LB_POLICY[listener.scheduler]
    if listener.persistence.mode is not PersistenceMode.NONE and policy not in HASHED:
        policy = Cluster.MAGLEV if listener.scheduler is Scheduler.MH else Cluster.RING_HASH
    return policy


def hashes_source_ip(listener: Listener) -> bool:
    """Whether requests are hashed on the client's address (else on a cookie, or not at all)."""
    if listener.persistence.mode is PersistenceMode.COOKIE:
        return False
    return lb_policy(listener) in HASHED


def weighted(listener: Listener) -> bool:
    return listener.scheduler not in UNWEIGHTED


# -- limits -------------------------------------------------------------------------------
# Admission control happens once, at the listener: at most LISTENER_MAX_CONNECTIONS client
# connections, each with at most DOWNSTREAM_MAX_STREAMS concurrent HTTP/2 streams. Every
# circuit breaker of the listener's clusters is sized to carry all of that, so a burst the
# listener admitted is never failed by a breaker behind it (Envoy's default of 1,024
# requests per cluster fails most calls of 5,000 concurrent gRPC streams).
#
# Upstream, Envoy opens a new HTTP/2 connection only when the open ones are full, so a
# backend gets about in-flight / UPSTREAM_MAX_STREAMS connections per Envoy worker (fewer if
# it advertises a lower SETTINGS_MAX_CONCURRENT_STREAMS). 100 is the least RFC 9113 asks
# every server to allow; Envoy's own default (2^31 - 1) is unsafe: until a new
# connection's SETTINGS frame arrives Envoy assumes no limit, and a burst opens hundreds of
# streams that a server with a limit then resets.

LISTENER_MAX_CONNECTIONS = 10_000
DOWNSTREAM_MAX_STREAMS = 1_000
UPSTREAM_MAX_STREAMS = 100
IN_FLIGHT_CEILING = LISTENER_MAX_CONNECTIONS * DOWNSTREAM_MAX_STREAMS
RETRY_BUDGET_PERCENT = 20.0
RETRY_MIN_CONCURRENCY = 10
NUM_RETRIES = 2
CONNECT_TIMEOUT_S = 5
BUFFER_LIMIT_BYTES = 1 << 20

# -- retries ------------------------------------------------------------------------------
# Only conditions where the backend cannot have acted on the request, plus the gRPC
# statuses that say the call did not go through: UNAVAILABLE, RESOURCE_EXHAUSTED, and
# CANCELLED (which grpc-core servers answer for calls caught in a connection's shutdown,
# e.g. a backend Envoy just stopped using). Istio retries the same gRPC statuses.
RETRY_ON = (
    "connect-failure,refused-stream,reset-before-request,unavailable,resource-exhausted,cancelled"
)

# -- outlier detection --------------------------------------------------------------------
OUTLIER_CONSECUTIVE_5XX = 5
OUTLIER_INTERVAL_S = 5
OUTLIER_BASE_EJECTION_S = 30
OUTLIER_MAX_EJECTION_PERCENT = 50
