"""Health checks of real servers from the LB node, and what they do to weights.

Results change weights in the kernel, never the desired state: a failing server goes to
weight 0 (no new connections; established ones carry on), a recovered one gets its
planned weight back. As Wikimedia's PyBal does with its depool threshold, checks may never
take a virtual service below a floor: at least `ceil(floor x servers)` of its servers stay
in, even failing ones, because a check that fails everywhere at once (the checker's own
network, an overloaded fleet) must not turn into a full outage. The earliest failures are
taken out first.

Every server starts healthy (so a restart restores weights a crash left at 0) and changes
state after `unhealthy_threshold` consecutive failures or `healthy_threshold` consecutive
successes, probed every `interval_s` with `timeout_s` per probe. A server of several
services with the same check is probed once.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from l4.ipvs import ServiceKey, VirtualService, join_host_port
from slb.model import DEFAULT_EXPECTED_CODES, HealthCheck, HealthCheckType

log = logging.getLogger(__name__)


class Target(NamedTuple):
    """One probe: a real server's address and port, and how to check it."""

    address: str
    port: int
    check: HealthCheck

    def __str__(self) -> str:
        return f"{self.check.type.value}://{join_host_port(self.address, self.port)}"


def targets(
    services: Mapping[ServiceKey, VirtualService], checks: Mapping[ServiceKey, HealthCheck]
) -> dict[Target, list[ServiceKey]]:
    """Every target to probe, with the services whose weights it decides."""
    found: dict[Target, list[ServiceKey]] = {}
    for key, check in checks.items():
        for target in _targets_of(services[key], check):
            found.setdefault(target, []).append(key)
    return found


class TargetsBook:
    """`targets` kept by service between calls, so that a change derives again only the
    services whose planned object or check is not the one of the last call (a plan made
    from the previous one hands untouched services over as the same objects), and the
    checker hears only of the targets that came or went. A target's hash is its check's,
    a model's: hashing every target per change was most of a change's time with 2,000
    checked services in the emulated lab VM."""

    def __init__(self) -> None:
        self.targets: dict[Target, list[ServiceKey]] = {}
        """What `targets` gives for the last call's inputs (changed in place)."""
        self._services: dict[ServiceKey, VirtualService] = {}
        self._checks: dict[ServiceKey, HealthCheck] = {}
        self._of: dict[ServiceKey, list[Target]] = {}

    def update(
        self,
        services: Mapping[ServiceKey, VirtualService],
        checks: Mapping[ServiceKey, HealthCheck],
    ) -> tuple[list[Target], list[Target]]:
        """Move to the targets of `services` under `checks`: (targets new, targets gone)."""
        touched = [
            key
            for key, check in checks.items()
            if self._checks.get(key) is not check or self._services.get(key) is not services[key]
        ]
        touched += [key for key in self._checks.keys() - checks.keys()]
        added: list[Target] = []
        emptied: set[Target] = set()
        for key in touched:
            for target in self._of.pop(key, ()):
                keys = self.targets[target]
                keys.remove(key)
                if not keys:
                    del self.targets[target]
                    emptied.add(target)
            if key in checks:
                self._of[key] = found = _targets_of(services[key], checks[key])
                for target in found:
                    keys = self.targets.setdefault(target, [])
                    if not keys and target not in emptied:
                        added.append(target)
                    keys.append(key)
        self._services, self._checks = dict(services), dict(checks)
        return added, [target for target in emptied if target not in self.targets]


def _targets_of(service: VirtualService, check: HealthCheck) -> list[Target]:
    """The probes that decide a service's weights: its real servers that take traffic."""
    return [target_of(d.address, d.port, check) for d in service.dests if d.weight > 0]


def target_of(address: str, port: int, check: HealthCheck) -> Target:
    """The probe of a real server: its port, or the check's own."""
    return Target(address, check.port or port, check)


def effective(
    services: Mapping[ServiceKey, VirtualService],
    checks: Mapping[ServiceKey, HealthCheck],
    down: Mapping[Target, float],
    floor: float,
) -> dict[ServiceKey, VirtualService]:
    """The planned services with failing servers at weight 0, within the floor.

    `down` maps each failing target to when it started failing. Pure.
    """
    result = dict(services)
    if down:
        for key, check in checks.items():
            result[key] = _depool(services[key], check, down, floor)
    return result


def _depool(
    service: VirtualService, check: HealthCheck, down: Mapping[Target, float], floor: float
) -> VirtualService:
    pooled = [d for d in service.dests if d.weight > 0]
    failing = sorted(
        (since, d.key)
        for d in pooled
        if (since := down.get(target_of(d.address, d.port, check))) is not None
    )
    if not failing:
        return service
    allowed = len(pooled) - math.ceil(floor * len(pooled))
    out = {dest_key for _, dest_key in failing[: max(allowed, 0)]}
    if not out:
        return service
    return service._replace(
        dests=tuple(d._replace(weight=0) if d.key in out else d for d in service.dests)
    )


# -- probes ----------------------------------------------------------------------------------


def _codes(expected: str | None) -> Callable[[int], bool]:
    ranges = []
    for part in (expected or DEFAULT_EXPECTED_CODES).split(","):
        low, _, high = part.partition("-")
        ranges.append((int(low), int(high or low)))
    return lambda status: any(low <= status <= high for low, high in ranges)


def probe_tcp(address: str, port: int, timeout: float) -> None:
    with socket.create_connection((address, port), timeout=timeout):
        pass


def probe_http(address: str, port: int, check: HealthCheck, timeout: float) -> None:
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", check.path or "/", headers={"User-Agent": "openslb-health"})
        status = connection.getresponse().status
    finally:
        connection.close()
    if not _codes(check.expected_codes)(status):
        raise ConnectionError(f"HTTP status {status}")


def probe_grpc(address: str, port: int, check: HealthCheck, timeout: float) -> None:
    """The gRPC health protocol (grpc.health.v1.Health/Check) must answer SERVING."""
    import grpc  # noqa: PLC0415 - only gRPC checks need it
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(join_host_port(address, port)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=check.grpc_service or "")
        reply = stub.Check(request, timeout=timeout)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        raise ConnectionError(f"gRPC health status {name}")


def probe(target: Target, timeout: float | None = None) -> None:
    """Raise if `target` fails its check (within `timeout`, else the check's); return if it
    passes."""
    check = target.check
    seconds = check.timeout_s if timeout is None else timeout
    if check.type is HealthCheckType.TCP:
        probe_tcp(target.address, target.port, seconds)
    elif check.type is HealthCheckType.HTTP:
        probe_http(target.address, target.port, check, seconds)
    else:
        probe_grpc(target.address, target.port, check, seconds)


def failure(target: Target, timeout: float | None = None) -> str:
    """Why `target` fails its check now; empty if it passes."""
    try:
        probe(target, timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


# -- the checker -----------------------------------------------------------------------------


@dataclass
class _State:
    healthy: bool = True
    since: float = 0.0
    streak: int = 0
    """Consecutive results against the current state."""
    in_flight: bool = False
    last_error: str = ""


class HealthChecker:
    """Probes every target on its interval from a small thread pool; reports transitions.

    `on_change(target, healthy)` runs in a pool thread after a target changes state.
    """

    def __init__(
        self,
        on_change: Callable[[Target, bool], None],
        workers: int = 16,
    ) -> None:
        self._on_change = on_change
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="l4-health")
        self._lock = threading.Condition()
        self._states: dict[Target, _State] = {}
        self._queue: list[tuple[float, int, Target]] = []
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="l4-health", daemon=True)

    def start(self) -> HealthChecker:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def set_targets(self, wanted: Collection[Target]) -> None:
        """Probe exactly these from now on; known targets keep their state."""
        with self._lock:
            wanted_set = set(wanted)
            self.change_targets(wanted_set - self._states.keys(), self._states.keys() - wanted_set)

    def change_targets(self, added: Collection[Target], removed: Collection[Target]) -> None:
        """Probe `added` from now on and `removed` no more; the others keep their state."""
        with self._lock:
            for target in removed:
                self._states.pop(target, None)
            now = time.monotonic()
            for target in added:
                if target not in self._states:
                    self._states[target] = _State(since=time.time())
                    heapq.heappush(self._queue, (now, next(self._order), target))
            self._lock.notify_all()

    def down(self) -> dict[Target, float]:
        """Failing targets, each with the wall-clock time it was declared down."""
        with self._lock:
            return {t: s.since for t, s in self._states.items() if not s.healthy}

    def errors(self) -> dict[Target, str]:
        with self._lock:
            return {t: s.last_error for t, s in self._states.items() if not s.healthy}

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                if not self._queue:
                    self._lock.wait()
                    continue
                due, _, target = self._queue[0]
                delay = due - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._queue)
                state = self._states.get(target)
                if state is None or state.in_flight:
                    continue  # no longer wanted, or its last probe is still running
                state.in_flight = True
                self._pool.submit(self._check, target, time.monotonic())

    def recheck(self, targets: Collection[Target], timeout: float, why: str) -> list[Target]:
        """Probe these healthy targets at once, within `timeout`; each that fails is down
        now, without waiting for `unhealthy_threshold` failures in a row: for when other
        evidence (`why`) already says they are likely dead. Return those that went down;
        they come back as any failing target does."""
        with self._lock:
            wanted = [t for t in targets if (s := self._states.get(t)) is not None and s.healthy]
        probes = {target: self._pool.submit(failure, target, timeout) for target in wanted}
        went_down = []
        for target, probed in probes.items():
            error = probed.result()
            if not error:
                continue
            with self._lock:
                state = self._states.get(target)
                if state is None or not state.healthy:
                    continue
                state.healthy, state.since, state.streak = False, time.time(), 0
                state.last_error = f"{why}: {error}"
            went_down.append(target)
            log.warning("%s is now down (%s: %s)", target, why, error)
        return went_down

    def _check(self, target: Target, started: float) -> None:
        error = failure(target)
        changed = False
        with self._lock:
            state = self._states.get(target)
            if state is None:
                return
            state.in_flight = False
            ok = not error
            if ok == state.healthy:
                state.streak = 0
            else:
                state.streak += 1
                check = target.check
                needed = check.healthy_threshold if ok else check.unhealthy_threshold
                if state.streak >= needed:
                    state.healthy, state.since, state.streak = ok, time.time(), 0
                    state.last_error = error
                    changed = True
            next_due = max(started + target.check.interval_s, time.monotonic())
            heapq.heappush(self._queue, (next_due, next(self._order), target))
            self._lock.notify_all()
        if changed:
            log.info("%s is now %s%s", target, "up" if ok else "down", f" ({error})" * bool(error))
            try:
                self._on_change(target, ok)
            except Exception:
                log.exception("health change handler failed for %s", target)
