"""A small, bounded time-series store in Redis for the console's charts.

The data planes sample their own counters (the l4 agent IPVS's connection and byte
counters, `slb envoy-stats` Envoy's: `l7/stats.py`) and append one point per listener and
node every few seconds (and, from Envoy, per backend); the console reads a window back and
sums over nodes (percentiles: the worst node). This is not a monitoring system (Prometheus scrapes
`/metrics` for that): it only keeps enough recent history for an operator to see a
listener come alive, without anything else to install.

Layout under the store prefix `P`:
  P:ts:SERIES:LABELS   sorted set, member "T VALUE", score T (unix seconds)
  P:ts-index:SERIES:LISTENER   set of the LABELS strings with that listener that have
                       points (a listener's chart reads its own, whatever the others)
  P:ts-index:SERIES    the same for label sets without a listener

LABELS is the canonical `k=v,k=v` form (keys sorted). Each series keeps at most
`max_points` points and none older than `retention_s`: every append trims, so memory is
bounded by (label sets x max_points) whatever the writers do.

A writer may thin idle series (`idle_every_s`): a zero that follows a zero is written once
in that time, not at every sample. At 10,000 listeners of 10 backends one Envoy's sample
is 420,000 points, nearly all zeros, two million Redis commands on the Redis that carries
the desired state (#18). A missing zero changes no sum over nodes and no maximum, and an
idle listener's chart still shows its zeros. Such a repeated zero is written with three
commands, not five (its series is indexed already, and the age trim bounds what one point
a period adds: `retention_s / idle_every_s` points beyond `max_points` at most), each
series at its own phase in the period, so that series which fell idle together are not
all written again in one sample (at 10,000 listeners that sample took 46 s, 33 s of it
writing).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from slb.storage.store import Store

CONNECTIONS = "connections"
"""Active connections (a gauge), labels: tier, listener, node."""
REQUESTS_PER_SECOND = "requests_per_second"
"""Requests per second over the last sampling interval (L7), labels: tier, listener, node."""
BYTES_PER_SECOND = "bytes_per_second"
"""Bytes per second in and out together, labels: tier, listener, node."""

NEW_CONNECTIONS_PER_SECOND = "new_connections_per_second"
"""Connections accepted per second (L7), labels: tier, listener, node."""
RESPONSES_2XX_PER_SECOND = "responses_2xx_per_second"
"""Responses with a 2xx status per second (L7; gRPC errors ride HTTP 200), same labels."""
RESPONSES_4XX_PER_SECOND = "responses_4xx_per_second"
"""Responses with a 4xx status per second (L7), same labels."""
RESPONSES_5XX_PER_SECOND = "responses_5xx_per_second"
"""Responses with a 5xx status per second (L7), same labels."""
BYTES_IN_PER_SECOND = "bytes_in_per_second"
"""Bytes received from clients per second (L7), same labels."""
BYTES_OUT_PER_SECOND = "bytes_out_per_second"
"""Bytes sent to clients per second (L7), same labels."""
UPSTREAM_P50_MS = "upstream_p50_ms"
"""Median upstream request time, ms, since the previous sample (L7), same labels."""
UPSTREAM_P99_MS = "upstream_p99_ms"
"""99th percentile upstream request time, ms, as UPSTREAM_P50_MS (L7), same labels."""
LIMITED_CONNECTIONS_PER_SECOND = "limited_connections_per_second"
"""Connections closed at the listener's `max_connections` per second (L7), same labels."""
RATE_LIMITED_CONNECTIONS_PER_SECOND = "rate_limited_connections_per_second"
"""Connections closed beyond `connections_per_second`, per second (L7), same labels."""
RATE_LIMITED_REQUESTS_PER_SECOND = "rate_limited_requests_per_second"
"""Requests answered 429 beyond `requests_per_second`, per second (L7), same labels."""

SERIES = (
    CONNECTIONS, REQUESTS_PER_SECOND, BYTES_PER_SECOND, NEW_CONNECTIONS_PER_SECOND,
    RESPONSES_2XX_PER_SECOND, RESPONSES_4XX_PER_SECOND, RESPONSES_5XX_PER_SECOND,
    BYTES_IN_PER_SECOND, BYTES_OUT_PER_SECOND, UPSTREAM_P50_MS, UPSTREAM_P99_MS,
    LIMITED_CONNECTIONS_PER_SECOND, RATE_LIMITED_CONNECTIONS_PER_SECOND,
    RATE_LIMITED_REQUESTS_PER_SECOND,
)  # fmt: skip
"""The series of a listener, labels tier, listener, node."""
WORST_OF_NODES = frozenset({UPSTREAM_P50_MS, UPSTREAM_P99_MS})
"""Series combined over nodes by their maximum (a percentile cannot be summed)."""

BACKEND_CONNECTIONS = "backend_connections"
"""Active upstream connections to one backend (L7), labels: backend, tier, listener, node."""
BACKEND_REQUESTS_PER_SECOND = "backend_requests_per_second"
"""Requests sent to one backend per second (L7), labels as BACKEND_CONNECTIONS."""
BACKEND_ERRORS_PER_SECOND = "backend_errors_per_second"
"""Requests to one backend that failed (5xx, reset, timeout) per second, labels as above."""

BACKEND_SERIES = (BACKEND_CONNECTIONS, BACKEND_REQUESTS_PER_SECOND, BACKEND_ERRORS_PER_SECOND)
"""The series of a listener's backend, label `backend` ADDRESS:PORT (':' kept as '_')."""

_SKIP, _REPEATED, _FULL = "skip", "repeated", "full"
"""How `TimeSeries` writes a point (`TimeSeries._write`)."""

DEFAULT_RETENTION_S = 3600
DEFAULT_MAX_POINTS = 720
IDLE_EVERY_S = 60.0
"""How often the data planes write a point of an idle series (see above)."""

_LABEL_SAFE = str.maketrans({",": "_", "=": "_", ":": "_", " ": "_"})


@dataclass(frozen=True)
class Point:
    t: float
    value: float


@dataclass(frozen=True)
class Series:
    name: str
    labels: Mapping[str, str]
    points: tuple[Point, ...]


def label_key(labels: Mapping[str, str]) -> str:
    """The canonical form of a label set, usable inside a Redis key."""
    return ",".join(
        f"{k.translate(_LABEL_SAFE)}={str(v).translate(_LABEL_SAFE)}"
        for k, v in sorted(labels.items())
    )


def label_value(value: str) -> str:
    """A label's value as it is stored (and read back): ',', '=', ':' and ' ' become '_'."""
    return value.translate(_LABEL_SAFE)


def parse_label_key(text: str) -> dict[str, str]:
    if not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(","))


class TimeSeries:
    def __init__(
        self,
        store: Store,
        retention_s: float = DEFAULT_RETENTION_S,
        max_points: int = DEFAULT_MAX_POINTS,
        idle_every_s: float | None = None,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.max_points = max_points
        self.idle_every_s = idle_every_s
        self._idle_since: dict[str, float] = {}
        """Key -> when this writer last wrote a zero to it, while it stays zero."""
        self._forgot_at = 0.0

    def _key(self, series: str, labels: str) -> str:
        return self.store.key("ts", series, labels)

    def append(
        self, series: str, labels: Mapping[str, str], value: float, t: float | None = None
    ) -> None:
        """Add one point, then trim the series to its bounds (one round trip)."""
        self.append_many([(series, labels, value)], t)

    def append_many(
        self, points: Iterable[tuple[str, Mapping[str, str], float]], t: float | None = None
    ) -> None:
        """Add one point to each of several series at time `t`, as one pipeline.

        A tier samples every listener at once and writes them together.
        """
        t = time.time() if t is None else t
        pipe = self.store.redis.pipeline(transaction=False)
        for series, labels, value in points:
            labels_text = label_key(labels)
            key = self._key(series, labels_text)
            write = self._write(key, value, t)
            if write is _SKIP:
                continue
            pipe.zadd(key, {f"{t!r} {float(value)!r}": t})
            pipe.zremrangebyscore(key, "-inf", f"({t - self.retention_s!r}")
            pipe.expire(key, int(self.retention_s) + 60)
            if write is _FULL:
                pipe.zremrangebyrank(key, 0, -self.max_points - 1)
                pipe.sadd(self._index(series, labels.get("listener")), labels_text)
        pipe.execute()
        self._forget_gone(t)

    def _forget_gone(self, t: float) -> None:
        """Drop the idle memory of series no longer written (a listener removed): an idle
        series still sampled gets a zero every `idle_every_s`, so one without a zero for
        twice that is gone. Once per `idle_every_s`, so the memory stays bounded by what
        is sampled now."""
        if self.idle_every_s is None or t - self._forgot_at < self.idle_every_s:
            return
        self._forgot_at = t
        stale = t - 2 * self.idle_every_s
        self._idle_since = {k: since for k, since in self._idle_since.items() if since > stale}

    def _write(self, key: str, value: float, t: float) -> str:
        """How to write this point: not at all (a zero after a zero, within `idle_every_s`
        of this series' phase), as a repeated zero, or in full."""
        every = self.idle_every_s
        if every is None:
            return _FULL
        if value != 0:
            self._idle_since.pop(key, None)
            return _FULL
        since = self._idle_since.get(key)
        if since is None:  # the first zero: due again at this series' own phase
            self._idle_since[key] = t - self.phase(key)
            return _FULL
        if t - since < every:
            return _SKIP
        self._idle_since[key] = t - (t - since) % every  # the phase kept
        return _REPEATED

    def phase(self, key: str) -> float:
        """Where in `idle_every_s` a series' repeated zeros fall, the same on every run."""
        return zlib.crc32(key.encode()) % 1000 / 1000 * (self.idle_every_s or 0.0)

    def _index(self, series: str, listener: str | None) -> str:
        if listener is None:
            return self.store.key("ts-index", series)
        return self.store.key("ts-index", series, label_value(listener))

    def labels(self, series: str, listener: str | None = None) -> list[dict[str, str]]:
        """Every label set that has (or recently had) points in `series`: those of
        `listener` (its own index), or all (every listener's index, scanned)."""
        redis = self.store.redis
        if listener is not None:
            raw = redis.smembers(self._index(series, listener))
        else:
            indexes: list[str | bytes] = [self._index(series, None)]
            indexes += redis.scan_iter(match=self._index(series, "*"), count=1000)
            raw = set().union(*(redis.smembers(index) for index in indexes))
        return [parse_label_key(m.decode()) for m in sorted(raw)]

    def range(
        self,
        series: str,
        since: float,
        until: float | None = None,
        match: Mapping[str, str] | None = None,
    ) -> list[Series]:
        """Points of `series` in [since, until] for every label set that includes `match`."""
        match = {k: label_value(v) for k, v in (match or {}).items()}  # as they are stored
        chosen = [
            labels
            for labels in self.labels(series, match.get("listener"))
            if all(labels.get(k) == v for k, v in match.items())
        ]
        if not chosen:
            return []
        pipe = self.store.redis.pipeline(transaction=False)
        for labels in chosen:
            pipe.zrangebyscore(
                self._key(series, label_key(labels)),
                since,
                "+inf" if until is None else until,
            )
        out = []
        stale = []
        for labels, members in zip(chosen, pipe.execute(), strict=True):
            if not members and not self.store.redis.exists(self._key(series, label_key(labels))):
                stale.append(label_key(labels))
                continue
            points = []
            for member in members:
                t, value = member.decode().split(" ")
                points.append(Point(float(t), float(value)))
            out.append(Series(series, labels, tuple(points)))
        if stale:  # all from one index when a listener was matched, else a few
            by_index: dict[str, list[str]] = {}
            for labels_text in stale:
                index = self._index(series, parse_label_key(labels_text).get("listener"))
                by_index.setdefault(index, []).append(labels_text)
            for index, members in by_index.items():
                self.store.redis.srem(index, *members)
        return out


def bucketed(
    series: Iterable[Series],
    since: float,
    until: float,
    step: float,
    combine: Callable[[Iterable[float]], float] = sum,
) -> list[tuple[float, float]]:
    """Sum (or `combine`) of several series (e.g. one per node) per bucket of `step` seconds.

    Within a bucket, each series contributes its latest point, so a node sampling twice
    in one bucket is not counted twice. Buckets without any point are left out.
    """
    if step <= 0:
        raise ValueError("step must be positive")
    buckets: dict[int, dict[int, float]] = {}
    for index, one in enumerate(series):
        for point in one.points:
            if since <= point.t <= until:
                buckets.setdefault(int((point.t - since) // step), {})[index] = point.value
    return [(since + b * step, combine(values.values())) for b, values in sorted(buckets.items())]
