"""cmi's controller: labelled Services in, revisioned desired state out, status written back.

One leader at a time runs `Controller.run`. Changes to the watched caches (`cmi.cluster`)
mark Services dirty (`cmi.debounce`); after a short hold-off the dirty Services go through
the steps in order (`_reconcile`), which read the mirror of the store (`cmi.mirror`), and
then hear back (`cmi.report`). A periodic resync rebuilds everything from the caches and
rereads the store, so drift on either side is repaired (level-triggered).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial

import redis
from pydantic import ValidationError

from cmi import grace, readiness, vips
from cmi.build import Built, Previous, refused
from cmi.cluster import Cluster, sharing
from cmi.conflicts import PortBook
from cmi.debounce import Debouncer
from cmi.diff import diff
from cmi.gateway import CONTROLLER_NAME
from cmi.gateways import CLASS_KEY_PREFIX
from cmi.ipam import IPAM
from cmi.k8s.client import REQUEST_ERRORS, KubeClient
from cmi.k8s.informer import Informer
from cmi.mirror import Mirror, written_by_others
from cmi.quota import within_quotas
from cmi.report import ListenerStatus, Reporter
from cmi.viprecord import VipRecord
from slb.config import CmiSettings
from slb.model import (
    KINDS,
    AddressPool,
    Certificate,
    IPAddress,
    Listener,
    LoadBalancer,
    Namespace,
    OwnerKind,
    StoredObject,
)
from slb.snapshot import Change, Delete, Put, Snapshot
from slb.storage import connect
from slb.storage.follow import Follower
from slb.storage.secrets import Keyring, SecretStore
from slb.storage.status import BEAT_S, StatusBoard, TierStatus
from slb.storage.store import ConflictError, Fence, Store

log = logging.getLogger(__name__)

READINESS_PERIOD_S = 1.0
"""How often the data planes' reports are compared with what each Service needs."""
RESYNC_SLICE = 100
"""Services rebuilt per step of a periodic resync, changes handled between steps."""
LATE_SYNC_S = 60
"""How long the loop waits for the Gateway API's objects to be listed when its CRDs
appear after cmi began to lead."""


class Controller:
    """The work of the leader; `run` returns when `stop` is set or leadership is lost."""

    def __init__(
        self,
        kube: KubeClient,
        store: Store,
        settings: CmiSettings,
        identity: str,
        *,
        keyring: Keyring | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        """`keyring`: what encrypts the private keys of TLS Secrets (`secrets.key_file`)."""
        self.kube, self.store, self.settings, self.identity = kube, store, settings, identity
        self.secrets = SecretStore(store, keyring)
        self.ipam = IPAM(store)
        self.board = StatusBoard(store)
        self.listener_status = ListenerStatus(store)
        self.mirror = Mirror()
        self.ports = PortBook()
        self.dirty = Debouncer(settings.holdoff_ms / 1000, settings.max_holdoff_ms / 1000)
        self.cluster = Cluster(kube, settings, self.dirty, self.mirror, watch_timeout_s)
        self.reporter = Reporter(kube, self.cluster.services, self.mirror)
        self.reporter.ingresses = self.cluster.ingresses
        self.vip_record = (
            VipRecord(kube, settings.lease_namespace, settings.vip_record)
            if settings.vip_record
            else None
        )
        self.revision = self.writes = self.reconciles = 0
        self._lock = threading.RLock()  # the mirror is shared with the store follower
        self._resync_requested = threading.Event()
        self._resync_keys: list[str] | None = None
        """Services still to rebuild in the running periodic resync; None: none runs."""
        self._resync_began = 0.0
        self._synced = False
        self.store_id: str | None = None
        """The identity of the store cmi last read in full."""
        self.last_turn = time.monotonic()
        """When the loop last went round (for cmi's liveness probe)."""
        self._beaten = 0.0
        self.last_sync_s = 0.0
        self._readiness_inputs: object = None
        self._late_informers: list[Informer] = []
        """Informers started after the first sync (`_discover_late`), to stop at the end."""

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, fence: Fence) -> None:
        self.fence = fence
        if not connect.until_done(stop, self._load) or not self._discover(stop):
            return
        informers = self.cluster.informers
        for informer in informers:
            informer.start()
        follower = threading.Thread(target=self._follow_store, args=(stop,), daemon=True)
        follower.start()
        try:
            if not self._synced_all(informers, stop):
                return
            schedule = {"resync": 0.0, "readiness": 0.0}
            while not stop.is_set():
                connect.until_done(stop, partial(self._step, stop, schedule))
        finally:
            for informer in (*informers, *self._late_informers):
                informer.stop()
            follower.join(timeout=5)
            self.reporter.close()

    def _synced_all(
        self, informers: Iterable[Informer], stop: threading.Event, timeout_s: float = 1e9
    ) -> bool:
        """Wait until every informer has listed its objects; False: stopped or timed out."""
        deadline = time.monotonic() + timeout_s
        for informer in informers:
            while not informer.synced.wait(0.5):
                self.last_turn = time.monotonic()
                if stop.is_set() or self.last_turn > deadline:
                    return False
        return True

    def _discover_late(self, stop: threading.Event) -> None:
        """The Gateway API's CRDs, or one route kind's, installed after cmi began to lead:
        watched from the resync that finds them on. The caches are filled before any
        Gateway is built (the loop waits), so no Gateway is ever built without its routes."""
        try:
            found = self.cluster.gateway_api()
            late = self.cluster.late_route_kinds() if found is None else []
        except REQUEST_ERRORS as exc:
            log.warning("cannot ask the API server whether it serves the Gateway API: %s", exc)
            return
        informers = found.informers if found is not None else tuple(late)
        for informer in informers:
            informer.start()
        if not self._synced_all(informers, stop, timeout_s=LATE_SYNC_S):
            for informer in informers:
                informer.stop()
            if self.cluster.gateways is not None:
                self.cluster.gateways.unwatch_kinds(late)
            log.warning("the Gateway API's objects not listed in %d s; again at the next "
                        "resync", LATE_SYNC_S)  # fmt: skip
            return
        self._late_informers.extend(informers)
        if found is not None:
            self.cluster.gateways = self.reporter.gateways = found
            log.info("the Gateway API is installed now: serving the Gateways of "
                     "controllerName %s", CONTROLLER_NAME)  # fmt: skip
            classes = (CLASS_KEY_PREFIX + k for k, _ in found.classes.items())
            self.dirty.add([*found.keys(), *classes])
        elif late and self.cluster.gateways is not None:
            kinds = [k for k, i in self.cluster.gateways.routes.items() if i in late]
            log.info("route kinds installed now: %s", ", ".join(kinds))
            self.dirty.add(self.cluster.gateways.keys())

    def _discover(self, stop: threading.Event) -> bool:
        """Which APIs to watch (`Cluster.discover`), asked until the API server answers;
        False: stopped first."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.cluster.discover()
            except REQUEST_ERRORS as exc:
                log.warning("cannot ask the API server which APIs it serves (%s); again in "
                            "%.1f s", exc, backoff)  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self.last_turn = time.monotonic()
                continue
            self.reporter.gateways = self.cluster.gateways
            if self.cluster.gateways is not None:
                log.info("serving the Gateway API's Gateways of controllerName %s",
                         CONTROLLER_NAME)  # fmt: skip
            return True
        return False

    def _load(self) -> None:
        self.last_turn = time.monotonic()
        self.revision = self.mirror.load(self._identified_snapshot())

    def _identified_snapshot(self) -> Snapshot:
        """The store read afresh, with the pool cmi's settings define. A store cmi has not
        marked synced (emptied, replaced, or new) is marked as being rebuilt, so consumers
        hold their last good state until it is complete (`slb.integrity`)."""
        if pool := vips.default_pool(self.settings):  # a lost store lost it too
            self.store.put(pool, who=self.identity, why="pool from cmi settings")
        store_id = self.store.identity()
        snapshot = self.store.snapshot()
        if self.store_id is not None and store_id != self.store_id:
            log.error("the store was emptied or replaced (store %s, was %s): rebuilding it "
                      "from Kubernetes", store_id, self.store_id)  # fmt: skip
        rewound = snapshot.revision < self.revision  # restored from an older copy
        if rewound:
            log.error("the store went back to revision %d from %d: rebuilding it from "
                      "Kubernetes", snapshot.revision, self.revision)  # fmt: skip
        synced = snapshot.synced
        if rewound or synced is None or synced.store_id != store_id:
            self.store.mark_syncing(store_id)
        self.store_id = store_id
        return snapshot

    def _mark_synced(self) -> None:
        """A full rebuild is done: consumers may trust this store again."""
        assert self.store_id is not None
        if self.store.mark_synced(self.store_id, self.revision) is None:
            log.error("the store changed while cmi rebuilt it; rebuilding again")
            self._resync_requested.set()

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
            if self._synced:
                self._discover_late(stop)
            try:
                if self._synced:
                    self._resync_began, self._resync_keys = now, self._begin_resync()
                else:  # the first sync, in one step: nothing is served yet
                    self.resync()
                    self._synced = True
                    self._mark_synced()
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
        """Operators write too (instances, listeners): keep the mirror current and react.
        Trimmed past (what changed is unknown): a resync, soon."""
        for step in Follower(self.store, kinds=(), since=self.revision).follow(stop):
            if step.changes is None:
                self._resync_requested.set()
            elif step.changes:  # a Redis outage while absorbing: the batch once it is back
                connect.until_done(stop, partial(self._absorb, step.changes))

    def _absorb(self, batch: list[Change]) -> None:
        """Others' writes into the mirror; the Services they may concern made dirty."""
        touched = written_by_others(batch, self.identity)
        if not touched:
            return
        with self._lock:
            for kind, key in touched:
                before = self.mirror.objects.get((kind, key))
                after = self.store.get(KINDS[kind], key)
                self.mirror.refresh((kind, key), after)
                if after is None and isinstance(before, LoadBalancer):
                    self._deleted(before)
            shared = [key for kind, key in touched if kind == LoadBalancer.kind]
            sharers = sharing(shared, self.cluster.services.items()) if shared else set()
        self.dirty.add({"", *sharers})  # "": recheck conflicts and VIPs even if none changed

    def _deleted(self, balancer: LoadBalancer) -> None:
        """An operator deleted an instance: its VIP is free once the grace has passed (a
        store that lost it deletes nothing: its VIPs stay held, `cmi.viprecord`)."""
        if balancer.owner.kind is not OwnerKind.OPERATOR:
            return
        if (vip := self.ipam.release(balancer.name)) is not None:
            log.info("instance %s was deleted: VIP %s is free in %d s", balancer.name, vip,
                     self.settings.release_grace_s)  # fmt: skip

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
            self._mark_synced()

    def _begin_resync(self) -> list[str]:
        """Re-read the store into the mirror; every Service key that must be rebuilt."""
        with self._lock:
            self.revision = self.mirror.load(self._identified_snapshot())
            self._reserve_recorded_vips()
            self.cluster.relabelled([*self.cluster.namespaces.keys(), *self.mirror.of(Namespace)])
            keys = {*self.cluster.services.keys(), *self.cluster.gateway_keys(), *self.mirror.owned}
            return sorted(keys)

    def _reserve_recorded_vips(self) -> None:
        """Each operator's instance's recorded VIP held for it again, where the store lost
        it (`cmi.viprecord`); before any Service of the rebuild draws an address."""
        recorded = self.vip_record.load() if self.vip_record is not None else None
        for instance, vip in (recorded or {}).items():
            if self.ipam.reserve(instance, vip):
                log.warning("VIP %s held for operator instance %s again (from the record: "
                            "the store had lost it)", vip, instance)  # fmt: skip

    def check_readiness(self) -> None:
        """Compare what the data planes report with what each Service needs; tell it. Not
        again while neither the reports (their revisions and errors) nor the mirror nor the
        alarms moved: at 10,000 Services a check costs about 100 ms of the loop."""
        l4, l7 = self.board.all("l4"), self.board.all("l7")
        alarms = self.board.alarms()
        with self._lock:
            inputs = (self.mirror.version, _reported(l4), _reported(l7), alarms)
            if inputs == self._readiness_inputs:
                return
            self._readiness_inputs = inputs
            self.reporter.readiness(readiness.of_services(self.mirror, l4=l4, l7=l7))
            self.reporter.held(readiness.held(self.mirror, alarms=alarms, l4=l4))

    # -- the steps -------------------------------------------------------------------------

    def reconcile(self, keys: Iterable[str]) -> int:
        """Bring the store in line with these Services, then tell each one how it went.
        If the store cannot be written, the Services stay dirty for the next turn."""
        wanted = {k for k in keys if k}
        if classes := {k for k in wanted if k.startswith(CLASS_KEY_PREFIX)}:
            wanted -= classes
            self.reporter.gateway_classes([k.removeprefix(CLASS_KEY_PREFIX) for k in classes])
        with self._lock:
            try:
                return self._reconcile(wanted)
            except redis.RedisError:
                self.dirty.add(wanted | {""})
                raise

    def _reconcile(self, keys: set[str]) -> int:
        """The steps in order, each on the mirror as the ones before left it: namespaces,
        grace, operators' VIPs, build, quotas and Services' VIPs, diff (one fenced write),
        conflicts; then the reports."""
        self.reconciles += 1
        self._write_namespaces()  # 0. namespaces
        freed = self.ipam.expire(self.settings.release_grace_s)  # 1. grace
        for instance, address in freed:
            log.info("VIP %s of %s is free again", address, instance)
        if deletes := grace.expired([instance for instance, _ in freed], self.mirror):
            self._commit(deletes, why="grace")
        pools = self.mirror.of(AddressPool)  # 2. operators' VIPs
        for name, vip in vips.operator_vips(self.mirror.of(LoadBalancer), self.ipam, pools).items():
            self._write_operator_vip(name, vip)
        instances = self.mirror.of(LoadBalancer)
        self._record_operator_vips(instances)
        builds: list[tuple[str, Previous, Built]] = []
        for key in sorted(keys):  # 3. build
            previous = self.mirror.previous(key)
            builds.append((key, previous, self.cluster.build(key, previous, instances)))
        # 4. VIPs: a Service taking back the VIP its status names goes first, so a rebuilt
        # store gives it that VIP before any new Service can draw it.
        builds.sort(key=lambda item: item[2].remembered_vip is None)
        builds = within_quotas(
            builds, self.mirror,
            instances_limit=self.settings.instances_per_namespace,
            listeners_limit=self.settings.listeners_per_namespace,
        )  # fmt: skip
        results: list[tuple[str, Built, list[StoredObject]]] = [
            self._not_taken(key, previous, *vips.desired(b, previous, self.ipam, pools))
            for key, previous, b in builds
        ]
        results.sort(key=lambda item: item[0])
        ops = [  # 5. diff
            op
            for key, _, desired in results
            for op in diff(desired, self.mirror.objects, self.mirror.owned.get(key, set()))
        ]
        if ops:
            self._commit_with_keys(ops, results, why=f"{len(results)} Service(s)")
            self.writes += 1
        balancers, listeners = self.mirror.of(LoadBalancer), self.mirror.of(Listener)
        conflicts = self.ports.judge(balancers, listeners, self.mirror.take_touched())  # 6.
        self.listener_status.write(conflicts.listener_status)
        for key, built, _ in results:
            self.reporter.written(key, built, dict(conflicts.by_service.get(key, {})))
        return self.revision

    def _write_namespaces(self) -> None:
        """The `Namespace` objects of the namespaces whose labels changed, so that every tier
        decides `allowed_namespace_selector` on the labels cmi built with; if the write
        fails, they stay due."""
        due = self.cluster.take_relabelled()
        if not due:
            return
        desired = []
        for name in sorted(due):
            labels = self.cluster.namespace_labels(name)
            if labels is None:
                continue  # gone: its object is deleted
            try:
                desired.append(Namespace(name=name, labels=labels))
            except ValidationError as exc:  # never: the API server checks labels as strictly
                log.error("namespace %s: its labels cannot be stored: %s", name, exc)
        ops = diff(desired, self.mirror.objects, {(Namespace.kind, name) for name in due})
        try:
            if ops:
                self._commit(ops, why=f"{len(ops)} Namespace(s)")
        except redis.RedisError:
            self.cluster.relabelled(due)
            raise

    def _not_taken(
        self, key: str, previous: Previous, built: Built, objects: list[StoredObject]
    ) -> tuple[str, Built, list[StoredObject]]:
        """A Service never overwrites an object of the same name that another owner holds
        (an operator's listener, another Service's): it keeps what it was served with."""
        taken = [
            o for o in objects
            if (held := self.mirror.objects.get((o.kind, o.key))) is not None
            and (owner := getattr(held, "owner", None)) != getattr(o, "owner", None)
            and (owner is not None or isinstance(held, Certificate))  # (None: an operator's)
        ]  # fmt: skip
        if not taken:
            return key, built, objects
        names = ", ".join(f"{o.kind} {o.key}" for o in taken)
        kept = refused(key, previous, f"the name(s) {names} are taken by another owner")
        kept_objects = (kept.service, *kept.listeners, kept.dedicated,
                        *(p.certificate for p in kept.certificates))  # fmt: skip
        return key, kept, [o for o in kept_objects if o]

    def _commit_with_keys(
        self,
        ops: Sequence[Put | Delete],
        results: Sequence[tuple[str, Built, list[StoredObject]]],
        **meta: str,
    ) -> None:
        """`_commit`, with the private keys of the Services' new certificates stored first
        (no tier ever sees a ref without its key) and the keys no certificate names any
        more deleted after."""
        new_keys = {
            pair.certificate.key_ref: pair.key_pem
            for _, built, _ in results
            for pair in built.certificates
            if pair.key_pem is not None
        }
        certificates = self.mirror.of(Certificate)
        replaced = set()
        for op in ops:
            if isinstance(op, Put) and isinstance(op.obj, Certificate):
                if (pem := new_keys.get(op.obj.key_ref)) is not None:
                    self.secrets.put_key(op.obj.key_ref, pem)
                key = op.obj.key
            elif isinstance(op, Delete) and op.kind == Certificate.kind:
                key = op.key
            else:
                continue
            if (before := certificates.get(key)) is not None:
                replaced.add(before.key_ref)
        self._commit(ops, **meta)
        if replaced:
            named = {c.key_ref for c in self.mirror.of(Certificate).values()}
            for ref in replaced - named:
                self.secrets.delete_key(ref)

    def _commit(self, ops: Sequence[Put | Delete], **meta: str) -> None:
        """One fenced write; the mirror follows it. A write that lands behind the last one
        found a store restored from an older copy: consumers hold until it is rebuilt."""
        revision = self.store.apply(ops, fence=self.fence, who=self.identity, **meta)
        if revision < self.revision:  # (an emptied store has a new identity by now)
            self.store.mark_syncing(self.store.identity())
            self._resync_requested.set()
        self.revision = max(self.revision, revision)
        self.mirror.apply(ops, revision)

    def _record_operator_vips(self, instances: dict[str, LoadBalancer]) -> None:
        """Keep the VIP record (`cmi.viprecord`) true: the operators' instances' VIPs, and
        the recorded ones IPAM still holds for instances the store has lost."""
        record = self.vip_record
        if record is None or (recorded := record.recorded()) is None:
            return
        now = {
            name: balancer.vip
            for name, balancer in instances.items()
            if balancer.owner.kind is OwnerKind.OPERATOR and balancer.vip is not None
        }
        for name, vip in recorded.items():
            if name not in now and self.ipam.current(name) == vip:
                now[name] = vip
        record.write(now)

    def _write_operator_vip(self, name: str, vip: IPAddress) -> None:
        """An operator's instance gets its VIP, unless it changed meanwhile (the next
        reconcile tries again)."""
        stored = self.store.get(LoadBalancer, name)
        if stored is None or stored.obj.vip is not None:
            return
        with contextlib.suppress(ConflictError):
            self._commit([Put(stored.obj.model_copy(update={"vip": vip}), stored.revision)])


def _reported(board: Mapping[str, TierStatus]) -> frozenset[tuple[object, ...]]:
    """What readiness reads of a board: each node's group, revision and error, not when it
    last reported."""
    return frozenset(
        (node, s.group, s.revision, s.error, s.error_revision) for node, s in board.items()
    )
