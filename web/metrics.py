"""Prometheus `/metrics`: the console's own requests, and the state it shows."""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from slb.model import Listener, LoadBalancer, Service
from slb.storage.status import StatusBoard
from web.db import get_store, read_model

_KEY = "openslb.metrics"


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openslb_console_requests",
            "HTTP requests served by the console, by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openslb_console_request_seconds",
            "Time to serve a console request, by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.objects = Gauge(
            "openslb_desired_objects",
            "Objects in the desired state, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.revision = Gauge(
            "openslb_desired_revision", "The desired state's revision", registry=self.registry
        )
        self.node_revision = Gauge(
            "openslb_node_programmed_revision",
            "The revision each data-plane node reports as programmed",
            ["tier", "node", "group"],
            registry=self.registry,
        )
        self.node_error = Gauge(
            "openslb_node_error",
            "1 if the node's newest attempt failed (e.g. an Envoy NACK)",
            ["tier", "node", "group"],
            registry=self.registry,
        )


def init_app(app: Flask) -> None:
    app.extensions[_KEY] = ConsoleMetrics()
    app.before_request(_start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", "metrics", _metrics)


def _start() -> None:
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    metrics: ConsoleMetrics = current_app.extensions[_KEY]
    endpoint = request.endpoint or "unknown"
    metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    if "started" in g:
        elapsed = time.perf_counter() - g.started
        metrics.latency.labels(endpoint).observe(elapsed)
        # The time spent in the app, for browsers' dev tools and the benchmark.
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
    return response


def _metrics() -> Response:
    metrics: ConsoleMetrics = current_app.extensions[_KEY]
    snapshot = read_model().snapshot(get_store())
    metrics.revision.set(snapshot.revision)
    for cls in (Listener, LoadBalancer, Service):
        metrics.objects.labels(cls.kind).set(len(snapshot.objects.get(cls.kind, {})))
    board = StatusBoard(get_store())
    metrics.node_revision.clear()
    metrics.node_error.clear()
    for tier in ("l4", "l7"):
        for node, status in board.all(tier).items():
            metrics.node_revision.labels(tier, node, status.group).set(status.revision)
            metrics.node_error.labels(tier, node, status.group).set(1 if status.error else 0)
    return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)
