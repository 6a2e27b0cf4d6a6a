"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

A candidate takes the Lease when it is free or its holder stopped renewing for a whole
lease duration (measured on our own clock from when we last saw it change, never by
comparing clocks), then renews it every retry period. A leader that cannot renew within
the renew deadline steps down before its lease can expire under it.

The Lease's `leaseTransitions` grows with every change of holder; the leader passes it
to the store as a fencing token, so a deposed leader that wakes up late cannot write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cmi.k8s.client import REQUEST_ERRORS, KubeClient, KubeError

log = logging.getLogger(__name__)


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_started: Callable[[int], None],
        on_stopped: Callable[[], None],
        floor: Callable[[], int | None] = lambda: -1,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry period < renew deadline < lease duration")
        self.client = client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.on_started, self.on_stopped = on_started, on_stopped
        self.floor = floor
        """The newest fencing token the store has seen (None: cannot tell now). A new
        holder's `leaseTransitions` starts above it: a Lease deleted and made again starts
        at 0, and its leaders would be fenced out of the store for as many restarts."""
        self.leading = threading.Event()
        self.epoch = -1
        self._stop = threading.Event()
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) as last seen
        self._observed_at = 0.0
        self._last_renewal = 0.0
        self.last_turn = time.monotonic()
        """When the campaign loop last went round (for cmi's liveness probe)."""

    def run(self) -> None:
        """Campaign and lead until `stop()`; call the callbacks on every change of role."""
        while not self._stop.is_set():
            self.last_turn = time.monotonic()
            try:
                held = self._try_acquire_or_renew()
            except REQUEST_ERRORS as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                held = False
            now = time.monotonic()
            if held:
                self._last_renewal = now
                if not self.leading.is_set():
                    self.leading.set()
                    log.info("%s leads (epoch %d)", self.identity, self.epoch)
                    self.on_started(self.epoch)
            elif self.leading.is_set() and now - self._last_renewal > self.renew_deadline_s:
                self._step_down()
            self._stop.wait(self.retry_period_s)
        if self.leading.is_set():
            self._step_down(release=True)

    def stop(self) -> None:
        self._stop.set()

    def _step_down(self, release: bool = False) -> None:
        self.leading.clear()
        log.info("%s no longer leads", self.identity)
        if release:
            try:  # let a successor take over at once instead of waiting for expiry
                lease = self.client.get(self.path)
                if lease.get("spec", {}).get("holderIdentity") == self.identity:
                    lease["spec"]["holderIdentity"] = ""
                    lease["spec"]["leaseDurationSeconds"] = 1
                    self.client.request("PUT", self.path, body=lease)
            except REQUEST_ERRORS:
                pass
        self.on_stopped()

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self.client.get(self.path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec: dict[str, Any] = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime") or "")
        now = time.monotonic()
        if observed != self._observed:
            self._observed, self._observed_at = observed, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        stamp = _now_micro()
        if holder != self.identity:
            if (floor := self.floor()) is None:
                return False  # the token would be a guess: try again next period
            spec["leaseTransitions"] = max(int(spec.get("leaseTransitions") or 0), floor) + 1
            spec["acquireTime"] = stamp
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(self.lease_duration_s)
        spec["renewTime"] = stamp
        try:  # resourceVersion in the body makes this a compare-and-swap
            updated = self.client.request("PUT", self.path, body=lease)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self.epoch = int(updated["spec"].get("leaseTransitions") or 0)
        self._observed = (self.identity, stamp)
        self._observed_at = now
        return True

    def _create(self) -> bool:
        if (floor := self.floor()) is None:
            return False
        stamp = _now_micro()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration_s),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": floor + 1,
            },
        }
        try:
            created = self.client.request("POST", self.path.rsplit("/", 1)[0], body=body)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self.epoch = int(created["spec"].get("leaseTransitions") or 0)
        return True
