"""`slb cmi`'s health and metrics endpoint (`cmi.health_bind`): /healthz and /metrics.

A cmi whose campaign loop, or (while it leads) whose controller loop, stops turning is
stuck, not slow: /healthz answers 503 so the kubelet's liveness probe (or a supervisor)
restarts it and the Lease passes to the other replica. An outage of Redis or of the API
server is not that: the loops go on turning while they wait it out, so the probe stays
green and nothing is restarted for a fault that a restart cannot mend.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from slb.config import ConfigError, host_port

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from cmi.controller import Controller

log = logging.getLogger(__name__)

STALL_S = 60.0
"""A loop that has not turned for this long is stuck: both turn at least every few seconds
(a full resync of 10,000 Services, the slowest step, takes a few seconds)."""


@dataclass(frozen=True)
class Liveness:
    ok: bool
    reason: str


def liveness(
    now: float,
    *,
    campaign_turn: float,
    leading: bool,
    controller_turn: float | None,
    dead_threads: Iterable[str] = (),
) -> Liveness:
    """Whether cmi is alive, from when its loops last turned (monotonic seconds)."""
    if now - campaign_turn > STALL_S:
        return Liveness(False, f"the Lease campaign has not turned for {now - campaign_turn:.0f} s")
    if not leading:
        return Liveness(True, "standing by (another cmi leads)")
    if dead := sorted(dead_threads):
        return Liveness(False, f"leading, but {', '.join(dead)} died")
    if controller_turn is not None and now - controller_turn > STALL_S:
        return Liveness(False, f"the controller has not turned for {now - controller_turn:.0f} s")
    return Liveness(True, "leading")


class ControllerMetrics:
    """The leader's controller, read at each scrape (a new leader starts from zero)."""

    def __init__(self, leader: Callable[[], bool], controller: Callable[[], Controller | None]):
        self.leader, self.controller = leader, controller

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("openslb_cmi_leader", "1 while this cmi holds the Lease",
                                value=float(self.leader()))  # fmt: skip
        controller = self.controller()
        if controller is None:
            return
        yield CounterMetricFamily("openslb_cmi_reconciles", "Batches of dirty Services rebuilt",
                                  value=controller.reconciles)  # fmt: skip
        yield CounterMetricFamily("openslb_cmi_store_writes", "Fenced writes to the store",
                                  value=controller.writes)  # fmt: skip
        yield GaugeMetricFamily("openslb_cmi_revision", "Newest revision the leader wrote or read",
                                value=controller.revision)  # fmt: skip
        yield GaugeMetricFamily("openslb_cmi_last_sync_seconds", "Duration of the last full sync",
                                value=controller.last_sync_s)  # fmt: skip


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: not worth a log line each."""


def serve(bind: str, check: Callable[[], Liveness], registry: CollectorRegistry) -> WSGIServer:
    """Serve /healthz and /metrics on `bind` (HOST:PORT) from a daemon thread."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path != "/healthz":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"/healthz or /metrics\n"]
        state = check()
        status = "200 OK" if state.ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{state.reason}\n".encode()]

    host, port = host_port(bind, "cmi.health_bind")
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, app, server_class, _QuietHandler)
    except OSError as exc:
        raise ConfigError(f"cmi.health_bind: cannot listen on {bind}: {exc.strerror}") from None
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    log.info("cmi: /healthz and /metrics on %s", bind)
    return server
