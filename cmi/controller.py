"""cmi's controller: labelled Services in, revisioned desired state out, status written back.

One leader at a time runs `Controller.run`. Informers keep caches of Services,
EndpointSlices and Nodes; every change marks Services dirty; after a short hold-off the
dirty Services are rebuilt (`cmi.build`, pure), VIPs are allocated (`cmi.ipam`), and the
difference from what the store holds is written in one fenced transaction. Then each
Service hears back: status, finalizer, Events. A periodic resync rebuilds everything from
the caches and rereads the store, so drift on either side is repaired (level-triggered).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis

from cmi import build as builder
from cmi.annotation import EXPOSE_LABEL
from cmi.build import Built, Defaults, Event, Previous
from cmi.ipam import IPAM, IPAMError
from cmi.k8s.client import Body, KubeClient, KubeError
from cmi.k8s.informer import Informer
from cmi.k8s.writer import CONDITION, PROGRAMMED, Condition, EventRecorder, ServiceWriter
from cmi.readiness import Readiness, readiness
from cmi.workqueue import KeyedQueue
from slb.config import CmiSettings
from slb.model import (
    KINDS,
    AddressPool,
    IPAddress,
    Listener,
    LoadBalancer,
    NodeGroup,
    OwnerKind,
    Protocol,
    Service,
    StoredObject,
    dump_document,
)
from slb.resolve import claim_ports
from slb.storage import connect
from slb.storage.status import BEAT_S, StatusBoard
from slb.storage.store import Change, ConflictError, Delete, Fence, Put, Store

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]  # (kind, key)
READINESS_PERIOD_S = 1.0
"""How often the data planes' reports are compared with what each Service needs."""
OWNED_KINDS = (Listener, LoadBalancer, Service)


RESYNC_SLICE = 100
"""Services rebuilt per step of a periodic resync, changes handled between steps."""


class Debouncer:
    """Collects dirty keys; hands them out after a quiet hold-off, or at the latest after max."""

    def __init__(self, holdoff_s: float, max_holdoff_s: float) -> None:
        self.holdoff_s, self.max_holdoff_s = holdoff_s, max_holdoff_s
        self._keys: set[str] = set()
        self._first = 0.0
        self._last = 0.0
        self._cond = threading.Condition()

    def add(self, keys: Iterable[str]) -> None:
        with self._cond:
            now = time.monotonic()
            if not self._keys:
                self._first = now
            self._keys.update(keys)
            self._last = now
            self._cond.notify()

    def take(self, timeout: float) -> set[str]:
        """Wait up to `timeout` for a first key, then for the hold-off; return the batch."""
        with self._cond:
            if not self._keys and not self._cond.wait(timeout):
                return set()
            while self._keys:
                now = time.monotonic()
                due = min(self._last + self.holdoff_s, self._first + self.max_holdoff_s)
                if now >= due:
                    break
                self._cond.wait(due - now)
            keys, self._keys = self._keys, set()
            return keys


@dataclass
class Mirror:
    """cmi's copy of the store's objects, kept current by its own writes and by `refresh`."""

    objects: dict[ObjectKey, StoredObject] = field(default_factory=dict)
    owned: dict[str, set[ObjectKey]] = field(default_factory=dict)
    revisions: dict[ObjectKey, int] = field(default_factory=dict)

    def load(self, store: Store) -> int:
        snapshot = store.snapshot()
        self.objects, self.revisions = {}, {}
        for kind, objs in snapshot.objects.items():
            for key, stored in objs.items():
                self.objects[(kind, key)] = stored.obj
                self.revisions[(kind, key)] = stored.revision
        self.owned = {}
        for ref, obj in self.objects.items():
            self._own(ref, obj)
        return snapshot.revision

    def put(self, obj: StoredObject, revision: int) -> None:
        ref = (obj.kind, obj.key)
        self.delete(ref)
        self.objects[ref] = obj
        self.revisions[ref] = revision
        self._own(ref, obj)

    def delete(self, ref: ObjectKey) -> None:
        old = self.objects.pop(ref, None)
        self.revisions.pop(ref, None)
        owner = _service_owner(old) if old is not None else None
        if owner is not None:
            self.owned.get(owner, set()).discard(ref)

    def _own(self, ref: ObjectKey, obj: StoredObject) -> None:
        owner = _service_owner(obj)
        if owner is not None:
            self.owned.setdefault(owner, set()).add(ref)

    def of(self, cls: type[Any]) -> dict[str, Any]:
        return {key: obj for (kind, key), obj in self.objects.items() if kind == cls.kind}

    def previous(self, service_key: str) -> Previous:
        owned = [self.objects[ref] for ref in sorted(self.owned.get(service_key, ()))]
        return Previous(
            service=next((o for o in owned if isinstance(o, Service)), None),
            listeners={o.name: o for o in owned if isinstance(o, Listener)},
            load_balancer=next((o for o in owned if isinstance(o, LoadBalancer)), None),
        )


def _service_owner(obj: StoredObject) -> str | None:
    if isinstance(obj, Service):
        return obj.key
    owner = getattr(obj, "owner", None)
    if owner is not None and owner.kind is OwnerKind.SERVICE:
        return str(owner.name)
    return None


class Controller:
    """The work of the leader; `run` returns when `stop` is set or leadership is lost."""

    def __init__(
        self,
        kube: KubeClient,
        store: Store,
        settings: CmiSettings,
        identity: str,
        *,
        watch_timeout_s: int = 300,
    ) -> None:
        self.kube, self.store, self.settings, self.identity = kube, store, settings, identity
        self.defaults = Defaults(
            backend_mode="node" if settings.backend_mode == "node" else "pod",
            node_group=settings.node_group,
            pool=settings.pool,
            exclude_unschedulable=settings.exclude_unschedulable,
        )
        self.ipam = IPAM(store)
        self.board = StatusBoard(store)
        self.writer = ServiceWriter(kube)
        self.events = EventRecorder(kube)
        self.mirror = Mirror()
        self.dirty = Debouncer(settings.holdoff_ms / 1000, settings.max_holdoff_ms / 1000)
        scope = f"/namespaces/{settings.namespace}" if settings.namespace else ""
        self.services = Informer(
            kube, f"/api/v1{scope}/services", self._service_changed, watch_timeout_s=watch_timeout_s
        )
        self.slices = Informer(
            kube,
            f"/apis/discovery.k8s.io/v1{scope}/endpointslices",
            self._slice_changed,
            index=_slice_service,
            watch_timeout_s=watch_timeout_s,
        )
        self.nodes = Informer(
            kube, "/api/v1/nodes", self._node_changed, watch_timeout_s=watch_timeout_s
        )
        self.revision = 0
        self.writes = 0
        self._lock = threading.RLock()  # the mirror is shared with the store follower
        self._resync_requested = threading.Event()
        self._resync_keys: list[str] | None = None
        """Services still to rebuild in the running periodic resync; None: none runs."""
        self._resync_began = 0.0
        # Finalizers, status and Events go to the API server from a queue of their own,
        # so a thousand status writes never hold up the next change to the data plane.
        self.reports = KeyedQueue(workers=8, name="report")
        self.reconciles = 0
        self._synced = False
        self.last_turn = time.monotonic()
        """When the loop last went round (for cmi's liveness probe)."""
        self._beaten = 0.0
        self.last_sync_s = 0.0
        self._listener_status: dict[str, str] = {}
        self._readiness: dict[str, Readiness] = {}

    # -- informer callbacks: mark Services dirty -------------------------------------------

    def _service_changed(self, key: str, body: Body) -> None:
        self.dirty.add([key])

    def _slice_changed(self, key: str, body: Body) -> None:
        service = _slice_service(body)
        if service is not None:
            self.dirty.add([service])

    def _node_changed(self, key: str, body: Body) -> None:
        self.dirty.add(
            k for k, obj in self.mirror.of(Service).items() if obj.backend_mode == "node"
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, fence: Fence) -> None:
        self.fence = fence
        if not connect.until_done(stop, self._load):
            return
        informers = (self.nodes, self.slices, self.services)
        for informer in informers:
            informer.start()
        follower = threading.Thread(target=self._follow_store, args=(stop,), daemon=True)
        follower.start()
        try:
            for informer in informers:
                while not informer.synced.wait(0.5):
                    self.last_turn = time.monotonic()
                    if stop.is_set():
                        return
            schedule = {"resync": 0.0, "readiness": 0.0}
            while not stop.is_set():
                connect.until_done(stop, partial(self._step, stop, schedule))
        finally:
            for informer in informers:
                informer.stop()
            follower.join(timeout=5)
            self.reports.close()

    def _load(self) -> None:
        self.last_turn = time.monotonic()
        self._ensure_default_pool()
        self.revision = self.mirror.load(self.store)

    def _step(self, stop: threading.Event, schedule: dict[str, float]) -> None:
        """One turn of the loop: a resync (or a slice of one), the readiness check, or
        the changes that came in; `schedule` holds when the periodic ones are due."""
        now = self.last_turn = time.monotonic()
        if now - self._beaten >= BEAT_S:
            self.board.controller_beat(self.identity, self.fence.token, self.revision)
            self._beaten = now
        if now >= schedule["resync"] or self._resync_requested.is_set():
            self._resync_requested.clear()
            schedule["resync"] = now + self.settings.resync_s
            try:
                if self._synced:
                    self._resync_began, self._resync_keys = now, self._begin_resync()
                else:  # the first sync, in one step: nothing is served yet
                    self.resync()
                    self._synced = True
            except redis.RedisError:
                self._resync_requested.set()  # again as soon as Redis answers
                raise
        if self._resync_keys is not None:
            self._resync_step()
            return
        if now >= schedule["readiness"]:
            self.check_readiness()
            schedule["readiness"] = now + READINESS_PERIOD_S
        keys = self.dirty.take(timeout=min(READINESS_PERIOD_S, schedule["resync"] - now))
        if keys and not stop.is_set():
            self.reconcile(keys)

    def _follow_store(self, stop: threading.Event) -> None:
        """Operators write too (instances, listeners): keep the mirror current and react."""

        def resync_soon() -> int:
            self._resync_requested.set()
            return self.store.revision()

        self.store.tail(self.revision, stop, on_batch=self._absorb, on_trimmed=resync_soon)

    def _absorb(self, batch: list[Change]) -> None:
        touched: set[tuple[str, str]] = set()
        for change in batch:
            if change.meta.get("who") != self.identity:
                touched.update((kind, key) for _, kind, key in change.ops)
        if not touched:
            return
        affected: set[str] = {""}  # "": recheck conflicts and VIPs even if no Service changed
        with self._lock:
            for kind, key in touched:
                cls = KINDS[kind]
                stored = self.store.get(cls, key)
                if stored is None:
                    self.mirror.delete((kind, key))
                else:
                    self.mirror.put(stored.obj, stored.revision)
                if kind == LoadBalancer.kind:  # Services sharing it by name
                    affected.update(
                        k for k, body in self.services.items()
                        if (body["metadata"].get("labels") or {}).get(EXPOSE_LABEL) == key
                    )  # fmt: skip
        self.dirty.add(affected)

    def resync(self) -> None:
        """Rebuild everything from the caches against a fresh read of the store."""
        began = time.monotonic()
        self.reconcile(self._begin_resync())
        self.last_sync_s = time.monotonic() - began

    def _resync_step(self) -> None:
        """One slice of a periodic resync, after the changes that came in meanwhile: at
        1,000s of Services a resync must not hold a change up for seconds."""
        if keys := self.dirty.take(timeout=0):
            self.reconcile(keys)
        pending = self._resync_keys or []
        self.reconcile(pending[:RESYNC_SLICE])
        self._resync_keys = pending[RESYNC_SLICE:] or None
        if self._resync_keys is None:
            self.last_sync_s = time.monotonic() - self._resync_began

    def _begin_resync(self) -> list[str]:
        """Re-read the store into the mirror; every Service key that must be rebuilt."""
        with self._lock:
            self.revision = self.mirror.load(self.store)
            return sorted(set(self.services.keys()) | set(self.mirror.owned))

    def reconcile(self, keys: Iterable[str]) -> int:
        """Bring the store in line with these Services, then tell each one how it went.
        If the store cannot be written, the Services stay dirty for the next turn."""
        wanted = {k for k in keys if k}
        with self._lock:
            try:
                return self._reconcile(wanted)
            except redis.RedisError:
                self.dirty.add(wanted | {""})
                raise

    def _reconcile(self, keys: set[str]) -> int:
        self.reconciles += 1
        self._expire_grace()
        self._allocate_operator_vips()
        instances: dict[str, LoadBalancer] = self.mirror.of(LoadBalancer)
        results: list[tuple[str, Body | None, Built, list[StoredObject]]] = []
        for key in sorted(keys):
            body = self.services.get(key)
            previous = self.mirror.previous(key)
            if body is None:
                built = Built(key, exposed=False)
            else:
                built = builder.build(
                    body,
                    slices=self.slices.indexed(key),
                    nodes=dict(self.nodes.items()),
                    defaults=self.defaults,
                    previous=previous,
                    instances=instances,
                )
            results.append((key, body, *self._desired(built, previous)))
        ops = [op for key, _, _, desired in results for op in self._diff(key, desired)]
        if ops:
            self.revision = self.store.apply(
                ops, fence=self.fence, who=self.identity, why=f"{len(results)} Service(s)"
            )
            self.writes += 1
            for op in ops:
                if isinstance(op, Put):
                    self.mirror.put(op.obj, self.revision)
                else:
                    self.mirror.delete((op.kind, op.key))
        conflicts = self._conflicts()
        for key, _, built, _ in results:
            self.reports.submit(key, partial(self._report, key, built, conflicts.get(key, {})))
        return self.revision

    # -- steps -----------------------------------------------------------------------------

    def _desired(self, built: Built, previous: Previous) -> tuple[Built, list[StoredObject]]:
        """The objects a Service should own now; VIPs allocated. A VIP that cannot be had
        keeps what was served (nothing half-applied)."""
        if not built.exposed:
            kept: list[StoredObject] = []
            if previous.load_balancer is not None:  # hold the instance and its VIP for the grace
                self.ipam.release(previous.load_balancer.name)
                kept.append(previous.load_balancer)
            return built, kept
        balancer = built.dedicated
        if balancer is not None:
            try:
                vip = self.ipam.allocate(balancer.name, self._pools_for(balancer), balancer.vip)
            except IPAMError as exc:
                event = Event("Warning", "VIPUnavailable", str(exc))
                built = Built(built.key, exposed=previous.service is not None,
                              instance=built.instance, events=(*built.events, event))  # fmt: skip
                old = [previous.service, *previous.listeners.values(), previous.load_balancer]
                return built, [o for o in old if o is not None]
            balancer = balancer.model_copy(update={"vip": vip})
            built = Built(built.key, True, built.instance, balancer, built.service,
                          built.listeners, built.events)  # fmt: skip
        objects: list[StoredObject] = [*built.listeners]
        if built.service is not None:
            objects.append(built.service)
        if balancer is not None:
            objects.append(balancer)
        return built, objects

    def _pools_for(self, balancer: LoadBalancer) -> list[AddressPool]:
        pools: dict[str, AddressPool] = self.mirror.of(AddressPool)
        if balancer.vip is not None:
            return list(pools.values())
        if balancer.pool not in pools:
            raise IPAMError(f"address pool {balancer.pool!r} does not exist")
        return [pools[balancer.pool]]

    def _diff(self, key: str, desired: list[StoredObject]) -> list[Put | Delete]:
        want = {(o.kind, o.key): o for o in desired}
        ops: list[Put | Delete] = []
        for ref, obj in want.items():
            current = self.mirror.objects.get(ref)
            if current is None or dump_document(current) != dump_document(obj):
                ops.append(Put(obj))
        for ref in self.mirror.owned.get(key, set()) - set(want):
            ops.append(Delete(*ref))
        return ops

    def _expire_grace(self) -> None:
        """Instances whose VIP left its grace period go away with it."""
        freed = self.ipam.expire(self.settings.release_grace_s)
        deletes = []
        for instance, address in freed:
            log.info("VIP %s of %s is free again", address, instance)
            balancer = self.mirror.objects.get((LoadBalancer.kind, instance))
            owner = _service_owner(balancer) if balancer is not None else None
            if owner is not None and not any(
                ref[0] == Listener.kind for ref in self.mirror.owned.get(owner, ())
            ):
                deletes.append(Delete(LoadBalancer.kind, instance))
        if deletes:
            self.revision = self.store.apply(
                deletes, fence=self.fence, who=self.identity, why="grace"
            )
            for op in deletes:
                self.mirror.delete((op.kind, op.key))

    def _allocate_operator_vips(self) -> None:
        """Operators' instances with a pool get a VIP; fixed VIPs are claimed so no one else
        gets them."""
        for name, balancer in self.mirror.of(LoadBalancer).items():
            if balancer.owner.kind is not OwnerKind.OPERATOR:
                continue
            try:
                vip = self.ipam.allocate(name, self._pools_for(balancer), balancer.vip)
            except IPAMError as exc:
                if balancer.vip is None:
                    log.warning("instance %s gets no VIP: %s", name, exc)
                continue
            if balancer.vip is None:
                stored = self.store.get(LoadBalancer, name)
                if stored is None or stored.obj.vip is not None:
                    continue
                updated = stored.obj.model_copy(update={"vip": vip})
                try:
                    self.revision = self.store.apply(
                        [Put(updated, stored.revision)], fence=self.fence, who=self.identity
                    )
                except ConflictError:  # changed meanwhile; the next reconcile tries again
                    continue
                self.mirror.put(updated, self.revision)

    def _conflicts(self) -> dict[str, dict[str, str]]:
        """Why each Service's rejected listeners are not served: Service -> listener -> why."""
        _, rejected = claim_ports(self.mirror.of(LoadBalancer), self.mirror.of(Listener).values())
        listeners: dict[str, Listener] = self.mirror.of(Listener)
        by_service: dict[str, dict[str, str]] = {}
        status: dict[str, str] = {name: "served" for name in listeners}
        for rejection in rejected:
            status[rejection.listener] = rejection.reason
            owner = _service_owner(listeners[rejection.listener])
            if owner is not None and not rejection.pending:
                by_service.setdefault(owner, {})[rejection.listener] = rejection.reason
        self._write_listener_status(status)
        return by_service

    def _write_listener_status(self, status: Mapping[str, str]) -> None:
        """Each listener's state for the console: 'served' or why not."""
        key = self.store.key("listener-status")
        changed: dict[str | bytes, str] = {
            k: v for k, v in status.items() if self._listener_status.get(k) != v
        }
        gone = [k for k in self._listener_status if k not in status]
        pipe = self.store.redis.pipeline()
        if changed:
            pipe.hset(key, mapping=changed)
        if gone:
            pipe.hdel(key, *gone)
        pipe.execute()
        self._listener_status = dict(status)

    def _report(self, key: str, built: Built, conflicts: Mapping[str, str]) -> None:
        """Finalizer, status and Events for one Service, from its newest cached state."""
        body = self.services.get(key)
        if body is None:
            return
        for event in built.events:
            self.events.record(body, event.type, event.reason, event.message)
        for listener, reason in conflicts.items():
            self.events.record(
                body, "Warning", "ListenerConflict", f"listener {listener}: {reason}"
            )
        try:
            if built.exposed and built.instance is not None:
                self.writer.set_finalizer(body, present=True)
                self._write_exposure(body, built, conflicts)
            else:
                self.writer.set_finalizer(body, present=False)
                self.writer.set_status(body, [], {CONDITION: None, PROGRAMMED: None})
        except KubeError as exc:
            log.warning("status of %s not written: %s", builder.service_key(body), exc)

    def _write_exposure(self, body: Body, built: Built, conflicts: Mapping[str, str]) -> None:
        assert built.instance is not None
        balancer = self.mirror.objects.get((LoadBalancer.kind, built.instance))
        vip: IPAddress | None = getattr(balancer, "vip", None)
        served = [li for li in built.listeners if li.name not in conflicts]
        if vip is None:
            waiting = ("False", "WaitingForVIP", f"instance {built.instance} waits for a VIP")
            self.writer.set_status(body, [], {CONDITION: waiting, PROGRAMMED: None})
            return
        where = ", ".join(f"{vip}:{li.port}/{li.protocol.value}" for li in served) or "no port"
        message = f"exposed at {where} (instance {built.instance})"
        if conflicts:
            message += "; not served: " + "; ".join(f"{k}: {v}" for k, v in conflicts.items())
        ingress = [{
            "ip": str(vip), "ipMode": "VIP",
            "ports": [{"port": li.port, "protocol": li.protocol.transport} for li in served],
        }]  # fmt: skip
        exposed = ("True", "Exposed", message) if not conflicts else (
            "False", "ListenerConflict", message
        )  # fmt: skip
        old = _condition(body, CONDITION)
        programmed = self._readiness.get(built.key)
        conditions: dict[str, Condition | None] = {CONDITION: exposed}
        if programmed is not None:
            conditions[PROGRAMMED] = _programmed_condition(programmed)
        if self.writer.set_status(body, ingress, conditions) and old != exposed:
            self.events.record(body, "Normal", "Exposed", message)

    def check_readiness(self) -> None:
        """Compare what the data planes report with what each Service needs; tell it."""
        l4, l7 = self.board.all("l4"), self.board.all("l7")
        with self._lock:
            groups: dict[str, NodeGroup] = self.mirror.of(NodeGroup)
            jobs = []
            for key, service in self.mirror.of(Service).items():
                owned = self.mirror.owned.get(key, set())
                listeners = [self.mirror.objects[r] for r in owned if r[0] == Listener.kind]
                balancer = self.mirror.objects.get((LoadBalancer.kind, service.load_balancer))
                if not listeners or balancer is None:
                    continue
                group = getattr(balancer, "node_group", "default")
                changed_at = max(self.mirror.revisions.get(r, 0) for r in owned | {
                    (LoadBalancer.kind, service.load_balancer)})  # fmt: skip
                needs_l7 = any(getattr(li, "protocol", Protocol.TCP).is_l7 for li in listeners)
                now = readiness(
                    changed_at, group_name=group, group=groups.get(group), needs_l7=needs_l7,
                    l4=l4, l7=l7,
                )  # fmt: skip
                if self._readiness.get(key) != now:
                    self._readiness[key] = now
                    jobs.append((key, now))
        for key, now in jobs:
            self.reports.submit(f"ready:{key}", partial(self._report_readiness, key, now))

    def _report_readiness(self, key: str, now: Readiness) -> None:
        body = self.services.get(key)
        if body is None or _condition(body, CONDITION) is None:
            return  # not exposed (yet): the exposure report writes both conditions
        try:
            self.writer.set_status(body, None, {PROGRAMMED: _programmed_condition(now)})
        except KubeError as exc:
            log.warning("status of %s not written: %s", key, exc)
            return
        if now.state == "error":
            self.events.record(body, "Warning", "ProgrammingFailed", now.message)

    def _ensure_default_pool(self) -> None:
        if not self.settings.pool_cidrs:
            return
        cidrs = [c.strip() for c in self.settings.pool_cidrs.split(",") if c.strip()]
        pool = AddressPool.model_validate({"name": self.settings.pool, "cidrs": cidrs})
        self.store.put(pool, who=self.identity, why="pool from cmi settings")


def _condition(body: Body, type_: str) -> Condition | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return (c["status"], c["reason"], c["message"])
    return None


def _programmed_condition(now: Readiness) -> Condition:
    reason = {"programmed": "Programmed", "pending": "Pending", "error": "Error"}[now.state]
    return ("True" if now.state == "programmed" else "False", reason, now.message)


def _slice_service(body: Body) -> str | None:
    name = (body["metadata"].get("labels") or {}).get(builder.SERVICE_NAME_LABEL)
    return f"{body['metadata']['namespace']}/{name}" if name else None
