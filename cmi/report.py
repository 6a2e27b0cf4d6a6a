"""What each Service hears back, and what the console shows for each listener.

After every write a Service is told how it went: its finalizer (set while cmi holds
objects for it), its `openslb.io/Exposed` and `openslb.io/Programmed` conditions, its
ingress, and Events for what went wrong. What to say is worked out here as plain data
(`exposure`, `programmed_condition`); `Reporter` says it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from cmi import gateway, ingress
from cmi.build import Built, service_key
from cmi.conflicts import conflict_events
from cmi.gateways import Gateways
from cmi.ingresses import Ingresses
from cmi.k8s.client import Body, KubeClient, KubeError
from cmi.k8s.informer import Informer
from cmi.k8s.writer import (
    CONDITION,
    PROGRAMMED,
    Condition,
    EventRecorder,
    GatewayWriter,
    ServiceWriter,
)
from cmi.mirror import Mirror
from cmi.workqueue import KeyedQueue
from slb.model import IPAddress, LoadBalancer
from slb.readiness import Readiness
from slb.storage.store import Store

log = logging.getLogger(__name__)
ROUTE_WRITE_TRIES = 5


@dataclass(frozen=True)
class Exposure:
    """The status of an exposed Service."""

    ingress: list[dict[str, Any]]
    conditions: dict[str, Condition | None]
    message: str | None
    """For the Event when the Exposed condition changes; None while it waits for a VIP."""


def exposure(
    built: Built,
    vip: IPAddress | None,
    conflicts: Mapping[str, str],
    programmed: Readiness | None,
) -> Exposure:
    """Where the Service is served and which of its listeners are not, and why."""
    if vip is None:
        waiting = ("False", "WaitingForVIP", f"instance {built.instance} waits for a VIP")
        return Exposure([], {CONDITION: waiting, PROGRAMMED: None}, None)
    served = [li for li in built.listeners if li.name not in conflicts]
    where = ", ".join(f"{vip}:{li.port}/{li.protocol.value}" for li in served) or "no port"
    message = f"exposed at {where} (instance {built.instance})"
    if built.caveats:
        message += "; not as asked: " + "; ".join(built.caveats)
    if conflicts:
        message += "; not served: " + "; ".join(f"{k}: {v}" for k, v in conflicts.items())
    ingress = [{
        "ip": str(vip), "ipMode": "VIP",
        "ports": [{"port": li.port, "protocol": li.protocol.transport} for li in served],
    }]  # fmt: skip
    if built.refused is not None:  # its Warning Event says why; no Normal one
        exposed: Condition = ("False", built.refused_reason, f"{built.refused}: {message}")
    elif conflicts:
        exposed = ("False", "ListenerConflict", message)
    else:
        exposed = ("True", "Exposed", message)
    conditions: dict[str, Condition | None] = {CONDITION: exposed}
    if programmed is not None:
        conditions[PROGRAMMED] = programmed_condition(programmed)
    return Exposure(ingress, conditions, None if built.refused else message)


def programmed_condition(now: Readiness) -> Condition:
    reason = {"served": "Programmed", "pending": "Pending", "error": "Error"}[now.state]
    return ("True" if now.state == "served" else "False", reason, now.message)


def condition_of(body: Body, type_: str) -> Condition | None:
    """One of the Service's conditions as it shows now."""
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return (c["status"], c["reason"], c["message"])
    return None


class Reporter:
    """Tells Services how it went, from a queue of its own: a thousand status writes to the
    API server never hold up the next change to the data plane."""

    def __init__(
        self, kube: KubeClient, services: Informer, mirror: Mirror, gateways: Gateways | None = None
    ) -> None:
        self.writer = ServiceWriter(kube)
        self.gateway_writer = GatewayWriter(kube)
        self.gateways = gateways
        self.ingresses: Ingresses | None = None
        self._routes_told: dict[str, set[str]] = {}
        """The routes each Gateway (its dirty key) last wrote its entries into."""
        self._gateway_builds: dict[str, tuple[gateway.GatewayBuilt, Built, Mapping[str, str]]] = {}
        """Each Gateway's last build, what was stored of it and its conflicts."""
        self._gateway_due: dict[str, str] = {}
        """What each Gateway's next report must do: `full` (its status, Events and routes'
        status), `forget` (take its entries out of its routes') or `status` (Programmed
        moved). One job per Gateway reads it when it runs: the queue keeps only the last job
        submitted for a key, which must never drop a full report for a status-only one."""
        self._gateway_lock = threading.Lock()
        self.events = EventRecorder(kube)
        self.services, self.mirror = services, mirror
        self.queue = KeyedQueue(workers=8, name="report")
        self.told: dict[str, Readiness] = {}
        """The readiness each Service was last told."""
        self.told_held: dict[str, str] = {}
        """Why a data plane keeps its last good state for each Service, as last told."""

    def written(self, key: str, built: Built, conflicts: Mapping[str, str]) -> None:
        """After a write: queue the Service's finalizer, status and Events (a Gateway's:
        its status and its routes')."""
        if gateway.is_gateway_key(key):
            made = self.gateways.built.get(key) if self.gateways is not None else None
            with self._gateway_lock:
                if made is not None:
                    self._gateway_builds[key] = (made, built, conflicts)
                    self._gateway_due[key] = "full"
                else:  # gone, or no longer openslb's
                    self._gateway_builds.pop(key, None)
                    if not self._routes_told.get(key):
                        return
                    self._gateway_due[key] = "forget"
            self.queue.submit(key, partial(self._report_gateway_due, key))
            return
        if ingress.is_ingress_key(key):
            joined = self.ingresses.built.get(key) if self.ingresses is not None else None
            self.queue.submit(key, partial(self._report_ingress, key, built, joined, conflicts))
            return
        self.queue.submit(key, partial(self._report, key, built, conflicts))

    def gateway_classes(self, names: list[str]) -> None:
        """Queue the status of these GatewayClasses, if they are openslb's."""
        for name in names:
            self.queue.submit(f"class:{name}", partial(self._report_class, name))

    def _report_class(self, name: str) -> None:
        body = self.gateways.openslb_class(name) if self.gateways is not None else None
        if body is None:
            return
        try:
            self.gateway_writer.set_status("gatewayclasses", body, gateway.class_accepted(body))
        except KubeError as exc:
            log.warning("status of GatewayClass %s not written: %s", name, exc)

    def _forget_routes(self, key: str, keep: set[str]) -> None:
        """Take this Gateway's entries out of the `status.parents` of the routes it told
        before that no longer name it (or of all, when it is gone)."""
        named = key.removeprefix(gateway.KEY_PREFIX)
        for route_key in self._routes_told.get(key, set()) - keep:
            try:
                self._tell_route(route_key, named, [])
            except KubeError as exc:
                log.warning("status of %s not written: %s", route_key, exc)
        self._routes_told[key] = keep

    def _tell_route(self, route_key: str, named: str, entries: list[Any]) -> None:
        """A Gateway's entries in one route's `status.parents`, merged into the route as
        the API server has it now: Gateways write one route's status from threads of their
        own, so a write that lost a race with another's (409) is done again."""
        cached = self.gateways.route(route_key) if self.gateways is not None else None
        if cached is not None and not GatewayWriter.changes(
            cached, {"parents": gateway.route_parents(cached, named, entries)}
        ):
            return  # as told already (a change the cache has not seen yet rebuilds the Gateway)
        kind, namespace, name = gateway.split_route_key(route_key)
        resource = gateway.ROUTE_RESOURCES[kind]
        meta = {"namespace": namespace, "name": name}
        path = f"/apis/{gateway.GROUP}/v1/{GatewayWriter.path(resource, meta)}"
        for _ in range(ROUTE_WRITE_TRIES):
            try:
                route = self.gateway_writer.client.get(path)
            except KubeError as exc:
                if exc.status == 404:
                    return  # gone: nothing to tell
                raise
            parents = gateway.route_parents(route, named, entries)
            try:
                self.gateway_writer.set_status(
                    resource, route, {"parents": parents}, if_unchanged=True
                )
                return
            except KubeError as exc:
                if exc.status != 409:
                    raise
        log.warning("status of %s not written: it kept changing", route_key)

    def _report_gateway(
        self, key: str, made: gateway.GatewayBuilt, built: Built, conflicts: Mapping[str, str]
    ) -> None:
        """From the Gateway's newest cached state and its VIP as the mirror has it now;
        then each of its routes' `status.parents` (not while it is refused: then it keeps
        what it was served with, and they what they were told)."""
        assert self.gateways is not None
        name = key.removeprefix(gateway.KEY_PREFIX)
        body = self.gateways.gateways.get(name)
        if body is None:
            return
        for event in (*built.events, *conflict_events(conflicts)):
            self.events.record(body, event.type, event.reason, event.message)
        try:
            self._write_gateway_status(key, body, made, built)
            if built.refused and not made.built.refused:
                return
            self._forget_routes(key, set(made.routes))
            for route_key, entries in made.routes.items():
                self._tell_route(route_key, name, entries)
        except KubeError as exc:
            log.warning("status of Gateway %s or its routes not written: %s", name, exc)

    def _report_gateway_due(self, key: str) -> None:
        """What the Gateway's report must do now (`_gateway_due`), from its last build."""
        with self._gateway_lock:
            due = self._gateway_due.pop(key, "status")
            last = self._gateway_builds.get(key)
        if due == "forget":
            self._forget_routes(key, set())
            return
        if last is None:
            return
        if due == "full":
            self._report_gateway(key, *last)
            return
        body = self.gateways.gateways.get(key.removeprefix(gateway.KEY_PREFIX)) if (
            self.gateways is not None) else None  # fmt: skip
        if body is None:
            return
        try:  # the data planes caught up (or failed): Programmed alone moved
            self._write_gateway_status(key, body, last[0], last[1])
        except KubeError as exc:
            log.warning("status of Gateway %s not written: %s", key, exc)

    def _write_gateway_status(
        self, key: str, body: Body, made: gateway.GatewayBuilt, built: Built
    ) -> None:
        """From its VIP as the mirror has it now and its readiness as last told."""
        balancer = self.mirror.objects.get((LoadBalancer.kind, built.instance or ""))
        vip = balancer.vip if isinstance(balancer, LoadBalancer) else None
        generation = body["metadata"].get("generation", 0)
        ready = self.told.get(key)
        status = gateway.gateway_status(
            made,
            str(vip) if vip else None,
            generation,
            built,
            (ready.state, ready.message) if ready is not None else None,
        )
        self.gateway_writer.set_status("gateways", body, status)

    def _report_ingress(
        self,
        key: str,
        built: Built,
        made: ingress.IngressBuilt | None,
        conflicts: Mapping[str, str],
    ) -> None:
        """Its Events, and its VIP (as the mirror has it now) in its status and in that of
        the canaries that joined it; an Ingress no longer served has it taken back."""
        if self.ingresses is None or (body := self.ingresses.get(key)) is None:
            return
        for event in (*built.events, *conflict_events(conflicts)):
            self.events.record(body, event.type, event.reason, event.message)
        if built.foreign or ingress.is_canary(body):
            return  # another controller's; a canary's is its main Ingress's to write
        if built.refused and made is not None and made.built is not built:
            return  # refused: it keeps what it was served with, and its status
        balancer = self.mirror.objects.get((LoadBalancer.kind, built.instance or ""))
        vip = balancer.vip if isinstance(balancer, LoadBalancer) and built.exposed else None
        status = {"loadBalancer": ingress.ingress_status(str(vip) if vip else None)}
        joined = made.canaries if made is not None and built.exposed else ()
        for named in (key.removeprefix(ingress.KEY_PREFIX), *joined):
            target = self.ingresses.ingresses.get(named)
            if target is None:
                continue
            try:
                self.gateway_writer.set_status(
                    "ingresses", target, status, api=f"{ingress.GROUP}/v1"
                )
            except KubeError as exc:
                log.warning("status of Ingress %s not written: %s", named, exc)

    def readiness(self, now: Mapping[str, Readiness]) -> None:
        """Queue the Programmed condition of each Service and Gateway whose readiness
        changed."""
        changed = {key: ready for key, ready in now.items() if self.told.get(key) != ready}
        self.told.update(changed)
        for key, ready in changed.items():
            if gateway.is_gateway_key(key):
                with self._gateway_lock:
                    self._gateway_due.setdefault(key, "status")
                self.queue.submit(key, partial(self._report_gateway_due, key))
            else:
                self.queue.submit(f"ready:{key}", partial(self._report_programmed, key, ready))

    def held(self, now: Mapping[str, str]) -> None:
        """A Warning Event on each Service a data plane newly keeps its last good state for
        (`slb.integrity`): once per cause, not on every check."""
        changed = {key: why for key, why in now.items() if self.told_held.get(key) != why}
        self.told_held = dict(now)
        for key, why in changed.items():
            self.queue.submit(f"held:{key}", partial(self._report_held, key, why))

    def _report_held(self, key: str, why: str) -> None:
        body = self.services.get(key)
        if body is not None:
            message = f"serving its last good state, not the store's: {why}"
            self.events.record(body, "Warning", "DataPlaneHeld", message[:1000])

    def close(self) -> None:
        self.queue.close()

    def _report(self, key: str, built: Built, conflicts: Mapping[str, str]) -> None:
        """From the Service's newest cached state, and its VIP as the mirror has it now."""
        body = self.services.get(key)
        if body is None:
            return
        for event in (*built.events, *conflict_events(conflicts)):
            self.events.record(body, event.type, event.reason, event.message)
        try:
            if built.exposed and built.instance is not None and not built.referenced:
                self.writer.set_finalizer(body, present=True)
                balancer = self.mirror.objects.get((LoadBalancer.kind, built.instance))
                vip = balancer.vip if isinstance(balancer, LoadBalancer) else None
                status = exposure(built, vip, conflicts, self.told.get(key))
                old = condition_of(body, CONDITION)
                written = self.writer.set_status(body, status.ingress, status.conditions)
                if written and status.message is not None and old != status.conditions[CONDITION]:
                    self.events.record(body, "Normal", "Exposed", status.message)
            else:
                self.writer.set_finalizer(body, present=False)
                self._withdrawn(body, built)
        except KubeError as exc:
            log.warning("status of %s not written: %s", service_key(body), exc)

    def _withdrawn(self, body: Body, built: Built) -> None:
        """The status of a Service openslb does not expose. Only what openslb wrote is
        taken back: the ingress of a Service that has its condition (another controller
        may have written the ingress of any other), and of another class's Service only
        openslb's conditions, if it carries them from before."""
        ours = condition_of(body, CONDITION) is not None
        if built.foreign:
            if ours:
                self.writer.set_status(body, None, {CONDITION: None, PROGRAMMED: None})
            return
        why = ("False", built.refused_reason, built.refused) if built.refused else None
        self.writer.set_status(body, [] if ours else None, {CONDITION: why, PROGRAMMED: None})

    def _report_programmed(self, key: str, now: Readiness) -> None:
        """The Programmed condition alone, when the data planes catch up (or fail)."""
        body = self.services.get(key)
        if body is None or condition_of(body, CONDITION) is None:
            return  # not exposed (yet): the exposure report writes both conditions
        try:
            self.writer.set_status(body, None, {PROGRAMMED: programmed_condition(now)})
        except KubeError as exc:
            log.warning("status of %s not written: %s", key, exc)
            return
        if now.state == "error":
            self.events.record(body, "Warning", "ProgrammingFailed", now.message)


class ListenerStatus:
    """Each listener's state for the console (`slb.operations`): 'served' or why not.

    Only what changed since the last write is written.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._written: dict[str, str] = {}

    def write(self, status: Mapping[str, str]) -> None:
        key = self.store.key("listener-status")
        changed: dict[str | bytes, str] = {
            k: v for k, v in status.items() if self._written.get(k) != v
        }
        gone = [k for k in self._written if k not in status]
        pipe = self.store.redis.pipeline()
        if changed:
            pipe.hset(key, mapping=changed)
        if gone:
            pipe.hdel(key, *gone)
        pipe.execute()
        self._written = dict(status)
