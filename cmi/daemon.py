"""`slb cmi`: campaign for the Lease; while leading, run the controller and the handoff.

Two or more of these can run; only the holder of the Lease writes, and its fencing token
(the Lease's transition count) makes sure a deposed leader that has not noticed yet
cannot write either. A leader whose controller or handoff dies of an unexpected error
does not sit on the Lease serving nothing: it releases the Lease and exits non-zero, so
another replica takes over at once and the supervisor restarts this one (crash-only).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

import redis
from prometheus_client import CollectorRegistry

from cmi import probes
from cmi.controller import Controller
from cmi.handoff import Handoff
from cmi.k8s.client import KubeClient
from cmi.k8s.lease import LeaderElector
from slb.config import Settings
from slb.pipeline import make_app
from slb.storage.secrets import load_keyring
from slb.storage.store import Fence, Store

log = logging.getLogger(__name__)

FENCE = "cmi"
"""The name of cmi's fencing token in the store; the Lease's transitions are its value."""


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaderThreadError(RuntimeError):
    """A leader's controller or handoff thread ended with an unexpected error."""


Leading = dict[str, tuple[Controller, list[threading.Thread], threading.Event]]
"""While this cmi leads, "current": its controller, its threads and their stop event."""


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    died: list[str] = []
    kube = KubeClient.from_kubeconfig(settings.kube.kubeconfig)
    store = Store.connect(settings.redis)
    cmi = settings.cmi
    identity = cmi.identity or default_identity()
    keyring = load_keyring(settings.secrets)  # a bad key file stops cmi here, not mid-write
    leading: Leading = {}

    handoff = Handoff(store, make_app(settings, include_tasks=False))

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                work()
            except Exception:
                name = threading.current_thread().name
                log.exception("%s died; releasing the lease and exiting", name)
                died.append(name)
                shut_down()

        return body

    def started(epoch: int) -> None:
        leader_stop = threading.Event()
        controller = Controller(kube, store, cmi, identity, keyring=keyring)
        threads = [
            threading.Thread(
                target=guarded(partial(controller.run, leader_stop, Fence(FENCE, epoch))),
                name="controller",
            ),
            threading.Thread(target=guarded(partial(handoff.run, leader_stop)), name="handoff"),
        ]
        leading["current"] = (controller, threads, leader_stop)
        for thread in threads:
            thread.start()

    def stopped() -> None:
        current = leading.pop("current", None)
        if current is not None:
            _, threads, leader_stop = current
            leader_stop.set()
            for thread in threads:
                thread.join(timeout=30)

    elector = LeaderElector(
        kube,
        cmi.lease_namespace,
        cmi.lease_name,
        identity,
        lease_duration_s=cmi.lease_duration_s,
        renew_deadline_s=cmi.renew_deadline_s,
        retry_period_s=cmi.retry_period_s,
        on_started=started,
        on_stopped=stopped,
        floor=partial(_fence_floor, store),
    )

    def shut_down(*_: object) -> None:
        stop.set()
        elector.stop()

    if cmi.health_bind:
        _serve_probes(cmi.health_bind, elector, leading)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, shut_down)

    def watch_stop() -> None:
        stop.wait()
        elector.stop()

    threading.Thread(target=watch_stop, daemon=True).start()
    log.info("cmi %s campaigning for lease %s/%s", identity, cmi.lease_namespace, cmi.lease_name)
    try:
        elector.run()
    finally:  # however the campaign ends, no leader's thread outlives it (they are not daemons)
        stopped()
    if died:
        raise LeaderThreadError(f"cmi {identity}: {', '.join(died)} died (see the log above)")


def _serve_probes(bind: str, elector: LeaderElector, leading: Leading) -> None:
    """/healthz from when the loops last turned, /metrics from the leader's controller."""

    def controller() -> Controller | None:
        current = leading.get("current")
        return current[0] if current else None

    def check() -> probes.Liveness:
        current = leading.get("current")
        running, threads = (current[0], current[1]) if current else (None, [])
        return probes.liveness(
            time.monotonic(),
            campaign_turn=elector.last_turn,
            leading=elector.leading.is_set(),
            controller_turn=running.last_turn if running else None,
            dead_threads=[t.name for t in threads if t.ident and not t.is_alive()],
        )

    registry = CollectorRegistry()
    registry.register(probes.ControllerMetrics(elector.leading.is_set, controller))
    probes.serve(bind, check, registry)


def _fence_floor(store: Store) -> int | None:
    """The store's newest cmi fencing token; None while Redis does not answer."""
    try:
        return store.fence_token(FENCE)
    except redis.RedisError as exc:
        log.warning("cannot read the fencing token: %s", exc)
        return None
