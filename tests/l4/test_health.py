"""Health checks: the floor arithmetic (pure), and real probes against real servers on loopback."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from devbed.process import wait_until
from l4.health import HealthChecker, Target, TargetsBook, effective, probe, targets
from l4.ipvs import Dest, ServiceKey, VirtualService
from slb.model import HealthCheck

WEB = ServiceKey("TCP", "198.18.0.10", 80)
API = ServiceKey("TCP", "198.18.0.10", 81)
TCP = HealthCheck(type="tcp", interval_s=1, timeout_s=1, healthy_threshold=2, unhealthy_threshold=2)


def pool(*weights: int) -> VirtualService:
    dests = tuple(Dest(f"198.18.1.{i + 1}", 8080, w, "nat") for i, w in enumerate(weights))
    return VirtualService(WEB, "rr", (), 0, dests)


def down_at(*lasts_and_times: tuple[int, float]) -> dict[Target, float]:
    return {Target(f"198.18.1.{last}", 8080, TCP): t for last, t in lasts_and_times}


def weights(service: VirtualService) -> list[int]:
    return [d.weight for d in service.dests]


def test_a_failing_server_goes_to_weight_zero() -> None:
    got = effective({WEB: pool(1, 2, 3, 4)}, {WEB: TCP}, down_at((2, 5.0)), floor=0.5)
    assert weights(got[WEB]) == [1, 0, 3, 4]


def test_the_floor_keeps_servers_in_even_when_they_fail_earliest_out_first() -> None:
    down = down_at((3, 30.0), (1, 10.0), (2, 20.0))
    services, checks = {WEB: pool(1, 1, 1)}, {WEB: TCP}
    assert weights(effective(services, checks, down, floor=0.5)[WEB]) == [0, 1, 1]
    assert weights(effective(services, checks, down, floor=0.0)[WEB]) == [0, 0, 0]
    assert weights(effective(services, checks, down, floor=1.0)[WEB]) == [1, 1, 1]
    assert weights(effective({WEB: pool(1)}, checks, down, floor=0.5)[WEB]) == [1]


def test_servers_already_at_weight_zero_do_not_count_towards_the_floor() -> None:
    got = effective({WEB: pool(0, 1, 1, 1)}, {WEB: TCP}, down_at((2, 1.0), (3, 2.0)), floor=0.5)
    assert weights(got[WEB]) == [0, 0, 1, 1]


def test_unchecked_services_are_left_as_planned() -> None:
    other = pool(1, 1)._replace(key=API)
    services = {WEB: pool(1, 1), API: other}
    down = down_at((1, 1.0))
    got = effective(services, {WEB: TCP}, down, floor=0.0)
    assert got[API] is other
    assert weights(got[WEB]) == [0, 1]


def test_a_server_in_two_services_with_the_same_check_is_one_target() -> None:
    found = targets({WEB: pool(1, 0), API: pool(1)._replace(key=API)}, {WEB: TCP, API: TCP})
    assert found == {Target("198.18.1.1", 8080, TCP): [WEB, API]}


def test_a_check_with_its_own_port_probes_that_port_and_depools_the_server() -> None:
    """L7 listeners' real servers are Envoys: probed on their /ready port, not the VIP's."""
    ready = HealthCheck(type="http", path="/ready", port=9902, interval_s=1, timeout_s=1,
                        healthy_threshold=2, unhealthy_threshold=2)  # fmt: skip
    envoys = VirtualService(WEB, "mh", (), 0, (Dest("198.18.100.1", 80, 1, "dr"),
                                               Dest("198.18.100.2", 80, 1, "dr")))  # fmt: skip
    found = targets({WEB: envoys}, {WEB: ready})
    assert set(found) == {Target("198.18.100.1", 9902, ready), Target("198.18.100.2", 9902, ready)}
    got = effective({WEB: envoys}, {WEB: ready}, {Target("198.18.100.1", 9902, ready): 1.0}, 0.5)
    assert weights(got[WEB]) == [0, 1]


PORTED = TCP.model_copy(update={"port": 9902})
_service_step = st.sampled_from(["absent", "keep", "new"])
_check_step = st.sampled_from(["none", "keep", "tcp", "ported"])
_dests = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([0, 1])), max_size=3)
_step = st.lists(st.tuples(_service_step, _check_step, _dests), min_size=3, max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, min_size=1, max_size=6))
def test_a_kept_book_gives_the_targets_the_inputs_give_and_says_what_came_and_went(
    steps: list[list[tuple[str, str, list[tuple[int, int]]]]],
) -> None:
    """Each step keeps some services and checks as the very objects of the step before
    (as a plan made from the previous one does) and replaces or drops others."""
    keys = [ServiceKey("TCP", "198.18.0.10", port) for port in (80, 81, 82)]
    book = TargetsBook()
    services: dict[ServiceKey, VirtualService] = {}
    checks: dict[ServiceKey, HealthCheck] = {}
    for step in steps:
        before = set(targets(services, checks))
        new_services, new_checks = {}, {}
        for key, (service_step, check_step, dests) in zip(keys, step, strict=True):
            if service_step == "keep" and key in services:
                new_services[key] = services[key]
            elif service_step != "absent":
                found = {last: Dest(f"198.18.1.{last}", 8080, w, "nat") for last, w in dests}
                new_services[key] = VirtualService(key, "rr", (), 0, tuple(found.values()))
            if key in new_services and check_step != "none":
                kept = checks.get(key) if check_step == "keep" else None
                new_checks[key] = kept or (PORTED if check_step == "ported" else TCP)
        services, checks = new_services, new_checks
        added, removed = book.update(services, checks)
        wanted = targets(services, checks)
        assert {t: sorted(k) for t, k in book.targets.items()} == {
            t: sorted(k) for t, k in wanted.items()
        }
        assert sorted(added) == sorted(wanted.keys() - before)
        assert sorted(removed) == sorted(before - wanted.keys())


# -- probes against real servers -----------------------------------------------------------


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def test_tcp_probe(tcp_listener: socket.socket) -> None:
    port = port_of(tcp_listener)
    probe(Target("127.0.0.1", port, TCP))
    tcp_listener.close()
    with pytest.raises(ConnectionRefusedError):
        probe(Target("127.0.0.1", port, TCP))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(self.path.strip("/") or 200)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "codes", "passes"),
    [("/200", None, True), ("/302", None, True), ("/503", None, False),
     ("/404", "200,404", True), ("/204", "200", False), ("/250", "200-299", True)],
)  # fmt: skip
def test_http_probe_expects_the_listed_codes(
    http_port: int, path: str, codes: str | None, passes: bool
) -> None:
    check = HealthCheck(type="http", path=path, expected_codes=codes, timeout_s=2)
    if passes:
        probe(Target("127.0.0.1", http_port, check))
    else:
        with pytest.raises(ConnectionError, match="HTTP status"):
            probe(Target("127.0.0.1", http_port, check))


@pytest.fixture
def grpc_health() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(grace=None)


def test_grpc_probe_follows_the_serving_status(
    grpc_health: tuple[int, health.HealthServicer],
) -> None:
    port, servicer = grpc_health
    check = HealthCheck(type="grpc", grpc_service="shop.Cart", timeout_s=2)
    servicer.set("shop.Cart", health_pb2.HealthCheckResponse.SERVING)
    probe(Target("127.0.0.1", port, check))
    servicer.set("shop.Cart", health_pb2.HealthCheckResponse.NOT_SERVING)
    with pytest.raises(ConnectionError, match="NOT_SERVING"):
        probe(Target("127.0.0.1", port, check))
    with pytest.raises(grpc.RpcError):
        probe(Target("127.0.0.1", port, check.model_copy(update={"grpc_service": "unknown"})))


def test_the_checker_reports_down_after_the_threshold_and_up_after_recovery() -> None:
    """interval 1 s, 2 failures to go down, 2 successes to come back."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = port_of(listener)
    target = Target("127.0.0.1", port, TCP)
    changes: list[tuple[bool, float]] = []
    checker = HealthChecker(lambda t, ok: changes.append((ok, time.monotonic()))).start()
    try:
        checker.set_targets([target])
        time.sleep(1.5)
        assert changes == []
        assert checker.down() == {}
        listener.close()
        stopped = time.monotonic()
        wait_until(lambda: bool(changes), timeout=5, what="down")
        assert changes[0][0] is False
        assert changes[0][1] - stopped <= TCP.interval_s * TCP.unhealthy_threshold + 0.5
        assert target in checker.down()
        listener = socket.create_server(("127.0.0.1", port))
        wait_until(lambda: len(changes) == 2, timeout=5, what="up again")
        assert changes[1][0] is True
        assert checker.down() == {}
        checker.set_targets([])
        assert checker.down() == {}
    finally:
        checker.stop()
        listener.close()


def test_a_recheck_takes_a_silent_target_out_at_once_and_leaves_a_live_one() -> None:
    """What the agent does at a VRRP takeover: one failure is enough, and it comes back as
    any failing target does, after `healthy_threshold` passes."""
    live = socket.create_server(("127.0.0.1", 0))
    dead = socket.create_server(("127.0.0.1", 0))
    live_target = Target("127.0.0.1", port_of(live), TCP)
    dead_target = Target("127.0.0.1", port_of(dead), TCP)
    changes: list[tuple[Target, bool]] = []
    checker = HealthChecker(lambda t, ok: changes.append((t, ok))).start()
    try:
        checker.set_targets([live_target, dead_target])
        dead.close()
        assert checker.recheck([live_target, dead_target], 0.3, "at the takeover") == [dead_target]
        assert set(checker.down()) == {dead_target}
        assert checker.errors()[dead_target].startswith("at the takeover: ConnectionRefusedError")
        assert checker.recheck([live_target, dead_target], 0.3, "again") == []  # already out
        dead = socket.create_server(("127.0.0.1", dead_target.port))
        wait_until(lambda: (dead_target, True) in changes, timeout=10, what="back up")
        assert checker.down() == {}
    finally:
        checker.stop()
        live.close()
        dead.close()
