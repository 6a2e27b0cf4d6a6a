"""A listener's limits through a real Envoy (#17 item 3): requests and new connections a
second, and open connections; each refusal is counted where the console's sampler reads."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any

import grpc

from devbed.l7harness import (
    ECHO,
    RAW,
    Bed,
    channel,
    http_request,
    listener,
    load_balancer,
    service,
    wait_for_answer,
)
from devbed.process import wait_until
from l7.stats import EnvoyStats, admin_reader
from slb.snapshot import Put
from slb.storage.store import Store
from slb.storage.timeseries import (
    LIMITED_CONNECTIONS_PER_SECOND,
    RATE_LIMITED_CONNECTIONS_PER_SECOND,
    RATE_LIMITED_REQUESTS_PER_SECOND,
    TimeSeries,
)


def test_a_request_bandwidth_paces_a_download(store: Store, bed: Bed) -> None:
    """#17 item 3: 256 KiB at 64 KiB/s take about 4 s through Envoy's bandwidth limit,
    where the listener without one serves them at once."""
    (b1,) = bed.backends(["b1"])
    vip = bed.net.address(10)
    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("web", [(b1.address, b1.http_port)], port_name="http")),
        Put(listener("paced", "HTTP", 8084, app="web", target_port="http", health_check=None,
                     limits={"request_bandwidth_kib_s": 64})),
        Put(listener("free", "HTTP", 8085, app="web", target_port="http", health_check=None)),
    ])  # fmt: skip
    bed.xds.start()
    bed.envoy("n1")
    wait_until(lambda: _status(vip, 8084) == 200 and _status(vip, 8085) == 200, 30,
               "the listeners answer")  # fmt: skip

    def download(port: int) -> float:
        started = time.monotonic()
        answer = http_request(vip, port, "shop.test", f"/bytes/{256 * 1024}")
        assert (answer.status, len(answer.body)) == (200, 256 * 1024)
        return time.monotonic() - started

    assert download(8085) < 1.0
    assert 3.0 <= download(8084) <= 8.0


def _status(vip: str, port: int) -> int | str:
    try:
        return http_request(vip, port, "shop.test", "/").status
    except (ConnectionError, http.client.RemoteDisconnected) as exc:
        return type(exc).__name__


def test_requests_connections_and_their_rates_are_limited(store: Store, bed: Bed) -> None:
    (b1,) = bed.backends(["b1"])
    vip = bed.net.address(9)

    def web(name: str, port: int, **limits: Any) -> Put:
        return Put(listener(name, "HTTP", port, app="web", target_port="http",
                            health_check=None, limits=limits))  # fmt: skip

    store.apply([
        Put(load_balancer("lb", vip)),
        Put(service("web", [(b1.address, b1.http_port)], port_name="http")),
        Put(service("echo", [(b1.address, b1.grpc_port)])),
        web("rps", 8081, requests_per_second=5),
        web("cps", 8082, connections_per_second=3),
        web("conns", 8083, max_connections=2),
        Put(listener("grpc", "GRPC", 50052, app="echo", limits={"requests_per_second": 2})),
    ])  # fmt: skip
    bed.xds.start()
    envoy = bed.envoy("n1")
    wait_for_answer(f"{vip}:50052")
    wait_until(lambda: _status(vip, 8083) == 200, 30, "the listeners answer")

    # Requests a second: a burst of 20 on one connection gets about 5 through, the rest
    # are 429s that say why.
    conn = http.client.HTTPConnection(vip, 8081, timeout=5)
    answers = []
    for _ in range(20):
        conn.request("GET", "/", headers={"Host": "shop.test"})
        response = conn.getresponse()
        response.read()
        answers.append((response.status, response.getheader("x-openslb-rate-limited")))
    conn.close()
    assert answers.count((200, None)) in range(4, 8), answers
    assert answers.count((429, "true")) == 20 - answers.count((200, None))

    # gRPC calls over the limit end RESOURCE_EXHAUSTED, not UNAVAILABLE (no retry storm).
    codes = []
    with channel(f"{vip}:50052") as chan:
        call = chan.unary_unary(ECHO + "Who", **RAW)
        for _ in range(10):
            try:
                call(b"", timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}

    # New connections a second: 10 at once, about 3 answered, the rest closed unanswered.
    statuses = [_status(vip, 8082) for _ in range(10)]
    assert statuses.count(200) in range(2, 6), statuses
    assert 200 in statuses

    # Open connections: two held open, the third is closed; one freed, it gets in.
    held = [socket.create_connection((vip, 8083), timeout=5) for _ in range(2)]
    time.sleep(0.5)
    assert _status(vip, 8083) != 200
    held.pop().close()
    wait_until(lambda: _status(vip, 8083) == 200, 10, "a connection freed")
    for sock in held:
        sock.close()

    # The console's sampler counts each limit's refusals per listener, as rates.
    sampler = EnvoyStats(store, "n1", admin_reader(f"127.0.0.1:{envoy.admin_port}"))
    sampler.once()
    time.sleep(1.1)  # the buckets refill
    refused = [_status(vip, 8081) for _ in range(10)] + [_status(vip, 8082) for _ in range(10)]
    held = [socket.create_connection((vip, 8083), timeout=5) for _ in range(2)]
    time.sleep(0.5)
    refused.append(_status(vip, 8083))
    for sock in held:
        sock.close()
    assert refused.count(200) < len(refused) - 3
    since = time.time()
    sampler.once()
    series = TimeSeries(store)
    for name, counted in (
        ("rps", RATE_LIMITED_REQUESTS_PER_SECOND),
        ("cps", RATE_LIMITED_CONNECTIONS_PER_SECOND),
        ("conns", LIMITED_CONNECTIONS_PER_SECOND),
    ):
        (found,) = series.range(counted, since - 1, match={"listener": name, "node": "n1"})
        assert found.points[-1].value > 0, (name, found)
        quiet = series.range(counted, since - 1, match={"listener": "grpc", "node": "n1"})
        assert [p.value for s in quiet for p in s.points] == [0.0]
