"""gRPC through a real Envoy programmed by `slb xds`: per-request balancing, connection
folding, and the contrast with an L4 proxy."""

from __future__ import annotations

import math
import time

import grpc
import pytest

from devbed.l7harness import (
    ECHO,
    RAW,
    BackendServer,
    Bed,
    PeakSampler,
    balance,
    channel,
    host_stats,
    http_get,
    listener,
    load,
    load_balancer,
    service,
    wait_for_answer,
    who,
    workers,
)
from devbed.pki import self_signed
from devbed.process import wait_until
from slb.snapshot import Put
from slb.storage.store import Store


def grpc_world(store: Store, bed: Bed, max_streams: int = 0) -> tuple[str, list[BackendServer]]:
    """Three gRPC backends behind a GRPC listener on VIP:50051."""
    backends = bed.backends(["b1", "b2", "b3"], max_streams=max_streams)
    vip = bed.net.address(1)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in backends])),
        Put(listener("echo", "GRPC", 50051, app="echo")),
    ])  # fmt: skip
    return vip, backends


def test_one_connection_is_balanced_per_request_unlike_l4(store: Store, bed: Bed) -> None:
    vip, backends = grpc_world(store, bed)
    bed.xds.start()
    bed.envoy("n1")
    target = f"{vip}:50051"
    wait_for_answer(target)
    counts = balance(target, 3000)
    assert sum(counts.values()) == 3000
    assert set(counts) == {"b1", "b2", "b3"}
    for name, n in counts.items():
        assert abs(n / 3000 * 100 - 100 / 3) <= 5, (name, counts)

    l4_target = (vip, 50052)
    bed.l4_envoy(l4_target, backends)
    l4_counts = balance(f"{vip}:50052", 3000)
    assert len(l4_counts) == 1, l4_counts
    assert sum(l4_counts.values()) == 3000


def test_many_client_connections_fold_into_one_upstream_connection_per_worker(
    store: Store, bed: Bed
) -> None:
    """500 clients, each calling now and then: one upstream connection per worker.

    A worker opens another connection to a backend only when that backend has more than
    100 of its calls in flight (the per-connection stream cap: the 5,000-stream test), so
    the clients keep at most 90 calls in flight between them: however the machine stalls
    a backend, one connection per worker must carry them all.
    """
    vip, backends = grpc_world(store, bed)
    bed.xds.start()
    envoy = bed.envoy("n1", concurrency=2)
    target = f"{vip}:50051"
    wait_for_answer(target)
    result = load(target, connections=500, streams=1, rounds=6, pause_ms=20, in_flight=90)
    assert result.failed == 0, result.errors
    assert result.ok == 3000
    per_backend = host_stats(envoy, "echo", "cx_total")
    assert set(per_backend) == {b.grpc_target for b in backends}
    workers_n = workers(envoy)
    for n in per_backend.values():
        assert 1 <= n <= workers_n, per_backend
    assert sum(per_backend.values()) < 10  # 500 client connections folded


def test_5000_streams_in_flight_through_one_worker_all_succeed(store: Store, bed: Bed) -> None:
    """Envoy's default circuit breakers (1,024 requests) would fail most of these calls.

    The backends allow 128 concurrent streams per connection (nginx's default); Envoy opens
    another upstream connection every 100 streams, so it never runs into their limit.
    """
    vip, _ = grpc_world(store, bed, max_streams=128)
    bed.xds.start()
    envoy = bed.envoy("n1", concurrency=1)
    target = f"{vip}:50051"
    wait_for_answer(target)
    with PeakSampler(envoy, "cluster.echo.upstream_rq_active", cluster="echo") as peak:
        result = load(target, connections=500, streams=10, rounds=2, hold_ms=6000)
    assert result.failed == 0, result.errors
    assert result.ok == 10_000
    assert peak.value >= 4_750, peak.value  # (nearly) all 5,000 were in flight together
    # Near (in flight at the backend) / 100 (the upstream stream limit) connections each;
    # the in-flight peaks are sampled, and a burst can open a few more than they show.
    per_backend = host_stats(envoy, "echo", "cx_total")
    churn = {
        k: v
        for k, v in envoy.stats("cluster.echo.").items()
        if v and ("destroy" in k or "protocol_error" in k or "reset" in k or "pending" in k)
    }
    for host, n in per_backend.items():
        assert n <= 1.5 * math.ceil(peak.hosts[host] / 100) + 2, (per_backend, peak.hosts, churn)
    assert 50 <= sum(per_backend.values()) <= 75, (per_backend, churn)


def test_a_30_second_stream_and_a_30_second_silent_call_complete(store: Store, bed: Bed) -> None:
    """No default timeout cuts long gRPC calls (Envoy's route default is 15 s)."""
    vip, _ = grpc_world(store, bed)
    bed.xds.start()
    bed.envoy("n1")
    target = f"{vip}:50051"
    wait_for_answer(target)
    with channel(target) as chan:
        silent = chan.unary_unary(ECHO + "Hold", **RAW).future(b"30000", timeout=60)
        started = time.monotonic()
        messages = [m.decode() for m in chan.unary_stream(ECHO + "Stream", **RAW)(b"31,1000")]
        assert time.monotonic() - started >= 30
        assert len(messages) == 31
        assert messages[-1].endswith(" 30")
        assert silent.result(timeout=10).decode() in {"b1", "b2", "b3"}


def test_active_health_checks_take_failing_backends_out(store: Store, bed: Bed) -> None:
    b1, b2, b3 = bed.backends(["b1", "b2", "b3"], unhealthy=["b2"])
    vip = bed.net.address(7)
    fast = {"interval_s": 1, "timeout_s": 1, "healthy_threshold": 2, "unhealthy_threshold": 2}
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in (b1, b2, b3)])),
        Put(service("web", [(b.address, b.http_port) for b in (b1, b2, b3)], port_name="http")),
        Put(listener("echo", "GRPC", 50051, health_check={"type": "grpc", **fast})),
        Put(listener("web", "HTTP", 8080, target_port="http",
                     health_check={"type": "http", "path": "/healthz", **fast})),
        Put(listener("tcp", "GRPC", 50052, app="echo", health_check={"type": "tcp", **fast})),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    assert set(balance(f"{vip}:50051", 300)) == {"b1", "b3"}  # gRPC health: b2 NOT_SERVING
    assert {http_get(vip, 8080, "shop.test")[1] for _ in range(30)} == {"b1", "b3"}
    # A TCP check only sees that b2 accepts connections: it stays in.
    assert set(balance(f"{vip}:50052", 300)) == {"b1", "b2", "b3"}
    assert envoy.stats("cluster.echo.health_check.failure")["cluster.echo.health_check.failure"] > 0


def test_tls_to_the_backends(store: Store, bed: Bed) -> None:
    backends = bed.backends(["s1", "s2"], tls_port=50443)
    vip = bed.net.address(8)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("secure", [(b.address, 50443) for b in backends])),
        Put(listener("secure", "GRPC", 50051, backend_protocol="tls")),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    assert set(balance(f"{vip}:50051", 100)) == {"s1", "s2"}
    stats = envoy.stats("cluster.secure.ssl.handshake")
    assert stats["cluster.secure.ssl.handshake"] >= 2


def test_backend_certificates_are_verified_with_the_server_name_sent(
    store: Store, bed: Bed
) -> None:
    """#17 item 4: with `backend_tls`, Envoy sends the server name and takes only backends
    whose certificate chains to the CA and carries that name: s2's (s2.backend.test) fails,
    so every call lands on s1; with a CA neither chains to, no call gets through."""
    backends = bed.backends(["s1", "s2"], tls_port=50443)
    s1, s2 = backends
    vip = bed.net.address(11)

    def secure(backend_tls: dict[str, str]) -> Put:
        return Put(listener("secure", "GRPC", 50051, backend_protocol="tls",
                            backend_tls=backend_tls))  # fmt: skip

    both = s1.tls_certificate() + s2.tls_certificate()
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("secure", [(b.address, 50443) for b in backends])),
        secure({"ca_pem": both, "sni": "s1.backend.test"}),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    assert set(balance(f"{vip}:50051", 60)) == {"s1"}
    failed = envoy.stats("cluster.secure.ssl.fail_verify_san")
    assert failed["cluster.secure.ssl.fail_verify_san"] > 0

    store.apply([secure({"ca_pem": self_signed("elsewhere.test").chain_pem})])

    def refused() -> bool:
        with channel(f"{vip}:50051") as chan:
            try:
                who(chan, timeout=2)
            except grpc.RpcError:
                return True
        return False

    wait_until(refused, 15, "calls refused once the backends cannot be verified")


def test_a_request_timeout_bounds_grpc_calls(store: Store, bed: Bed) -> None:
    backends = bed.backends(["b1"])
    vip = bed.net.address(10)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(b.address, b.grpc_port) for b in backends])),
        Put(listener("echo", "GRPC", 50051, request_timeout_s=2)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_for_answer(f"{vip}:50051")
    with channel(f"{vip}:50051") as chan:
        hold = chan.unary_unary(ECHO + "Hold", **RAW)
        assert hold(b"500", timeout=30).decode() == "b1"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            hold(b"5000")  # no deadline of its own: the listener's 2 s apply
        assert 1.5 < time.monotonic() - started < 4.5
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_rules_share_an_http_listener_and_reach_h2c_backends(store: Store, bed: Bed) -> None:
    """gRPC calls and plain HTTP requests on one port and host: a `grpc_only` rule takes
    the calls (to backends speaking h2c), everything else goes to HTTP/1.1 backends."""
    grpc_side, web_side = bed.backends(["g1", "w1"])
    vip = bed.net.address(11)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("echo", [(grpc_side.address, grpc_side.grpc_port)])),
        Put(service("site", [(web_side.address, web_side.http_port)], port_name="http")),
        Put(listener("site", "HTTP", 8080, target_port="http", health_check=None, routes=[
            {"name": "calls", "grpc_only": True, "forward_to": [{"selector": {
                "match_labels": {"app": "echo"}}, "target_port": "grpc"}]},
        ])),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    target = f"{vip}:8080"
    wait_for_answer(target, {"g1"})
    with channel(target) as chan:
        assert {who(chan) for _ in range(20)} == {"g1"}
    assert http_get(vip, 8080, "www.shop.test", "/") == (200, "w1")
