"""The console at scale: 1,000 listeners and 1,000 exposed Services in the store.

Starts a real `slb console` (waitress) against a real Redis holding 1,000 exposed Services
(10 endpoints each) and 1,000 operators' listeners selecting them, with 4 L4 nodes and 4
Envoys reporting, then requests the listener list page and the main API list call. The
figure is the server's own time (the `Server-Timing` header the app sets), so it does
not include the benchmark's HTTP client; the round trip is recorded beside it. Every 10
requests one Service's endpoints change (as cmi would write them), so the figures include
the console catching up with the change stream, not only a warm cache.

    .venv/bin/python -m bench.console [--listeners 1000] [--services 1000] [--requests 300]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import results_file
from devbed.process import Process, free_port, wait_until
from devbed.redis import RedisServer
from slb.model import Listener, LoadBalancer, Service
from slb.snapshot import Put
from slb.storage.status import StatusBoard
from slb.storage.store import Store
from web.auth import Accounts, Role

PREFIX = "bench"
GROUPS = 50
"""Distinct `app` label values: each listener's selector matches 1,000 / 50 = 20 Services."""


def service(index: int, generation: int = 0) -> Service:
    backends = [
        {"address": f"198.18.{32 + (index * 10 + e) // 250}.{(index * 10 + e) % 250 + 1}",
         "port": 8080 + generation, "node": f"node-{e % 5}"}
        for e in range(10)
    ]  # fmt: skip
    return Service.model_validate(
        {"namespace": "bench", "name": f"svc-{index}",
         "labels": {"app": f"a{index % GROUPS}", "openslb.io/expose": "true"},
         "load_balancer": f"lb-{index % 20}",
         "ports": [{"name": "http", "port": 80}], "backends": {"http": backends}}
    )  # fmt: skip


def populate(store: Store, listeners: int, services: int) -> None:
    ops: list[Put] = []
    for i in range(20):
        ops.append(Put(LoadBalancer.model_validate(
            {"name": f"lb-{i}", "vip": f"198.18.0.{i + 1}", "node_group": "default",
             "owner": {"kind": "Operator", "name": "bench"}, "allowed_namespaces": ["bench"]}
        )))  # fmt: skip
    for i in range(services):
        ops.append(Put(service(i)))
    for i in range(listeners):
        ops.append(Put(Listener.model_validate(
            {"name": f"listener-{i}", "load_balancer": f"lb-{i % 20}",
             "protocol": ("HTTP", "TCP", "GRPC", "UDP")[i % 4], "port": 1000 + i,
             "selector": {"match_labels": {"app": f"a{i % GROUPS}"}}, "target_port": "http",
             "health_check": None if i % 4 == 3 else {"type": "tcp"},
             "owner": {"kind": "Operator", "name": "bench"}, "created_at": float(i)}
        )))  # fmt: skip
    for start in range(0, len(ops), 500):
        store.apply(ops[start : start + 500], who="bench")
    board = StatusBoard(store)
    for n in range(4):
        board.report("l4", f"lb-node-{n}", "default", store.revision())
        board.report("l7", f"envoy-{n}", "default", store.revision() - n % 2)


def server_ms(response: requests.Response) -> float:
    found = re.search(r"app;dur=([0-9.]+)", response.headers.get("Server-Timing", ""))
    if response.status_code != 200 or not found:
        raise RuntimeError(f"{response.url}: {response.status_code} {response.text[:300]}")
    return float(found.group(1))


def measure(
    session: requests.Session, url: str, store: Store, count: int, services: int
) -> tuple[list[float], list[float]]:
    server, round_trip = [], []
    for n in range(count):
        if n % 10 == 0:
            store.put(service((n * 37) % services, generation=n // 10 + 1), who="bench-change")
        began = time.perf_counter()
        response = session.get(url, timeout=30)
        round_trip.append((time.perf_counter() - began) * 1000)
        server.append(server_ms(response))
    return server, round_trip


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(results_file.percentile(values, 50), 2),
        "p99": round(results_file.percentile(values, 99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    redis_server = RedisServer(work / "redis").start()
    console: Process | None = None
    try:
        store = Store(redis_server.client(), prefix=PREFIX)
        began = time.monotonic()
        populate(store, args.listeners, args.services)
        print(f"stored {args.listeners} listeners and {args.services} Services "
              f"in {time.monotonic() - began:.1f} s", file=sys.stderr)  # fmt: skip
        accounts = Accounts(store)
        accounts.create_user("bench", "bench-password-1", Role.ADMIN)
        user = accounts.user("bench")
        assert user is not None
        _, secret = accounts.create_token(user, "bench")

        port = free_port()
        env = {
            "OPENSLB_CONFIG": "",
            "OPENSLB_REDIS_URL": redis_server.url,
            "OPENSLB_REDIS_PREFIX": PREFIX,
            "OPENSLB_CONSOLE_BIND": f"127.0.0.1:{port}",
            "OPENSLB_CONSOLE_SECRET_KEY_FILE": str(work / "secret-key"),
        }
        console = Process("console", [sys.executable, "-m", "slb.cli", "console"], work, env=env)
        console.start()
        base = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {secret}"

        def up() -> bool:
            assert console is not None
            console.check_alive()
            return session.get(f"{base}/api/v1/me", timeout=5).status_code == 200

        wait_until(up, 30, "slb console")
        cold = session.get(f"{base}/api/v1/listeners", timeout=60)
        cold_ms = server_ms(cold)
        print(f"first request (cold cache: reads and parses the whole state): {cold_ms:.0f} ms",
              file=sys.stderr)  # fmt: skip
        for _ in range(20):  # warm-up: imports, template compilation, connection pool
            session.get(f"{base}/listeners", timeout=30)
            session.get(f"{base}/api/v1/listeners", timeout=30)

        results: dict[str, Any] = {}
        for name, path in (
            ("page", "/listeners"),
            ("api", "/api/v1/listeners"),
            ("api_all", "/api/v1/listeners?limit=1000"),
            ("page_filtered", "/listeners?state=pending&q=listener-1"),
        ):
            server, trip = measure(session, base + path, store, args.requests, args.services)
            results[name] = {"server": summary(server), "round_trip": summary(trip)}
            print(f"{path}: server p50 {results[name]['server']['p50']} ms, "
                  f"p99 {results[name]['server']['p99']} ms; round trip p50 "
                  f"{results[name]['round_trip']['p50']} ms", file=sys.stderr)  # fmt: skip
        total = session.get(f"{base}/api/v1/listeners", timeout=30).json()["total"]
        assert total == args.listeners, total

        def metric(value: float) -> dict[str, Any]:
            return {"value": value, "unit": "ms", "target": 100.0}

        written = results_file.write(
            "console",
            {
                "console_listener_page_p50_ms": metric(results["page"]["server"]["p50"]),
                "console_listener_page_p99_ms": metric(results["page"]["server"]["p99"]),
                "api_listener_list_p99_ms": metric(results["api"]["server"]["p99"]),
            },
            setup={
                "listeners": args.listeners,
                "services": args.services,
                "endpoints_per_service": 10,
                "requests_per_url": args.requests,
                "change_every_requests": 10,
                "page_size": {"page": 50, "api": 100},
                "server": "slb console (waitress, 8 threads)",
                "cold_first_request_ms": round(cold_ms, 1),
                "detail": results,
            },
        )
        print(f"wrote {written}", file=sys.stderr)
    finally:
        if console is not None:
            console.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
