"""The l4 agent: snapshot -> resolve -> plan -> reconcile -> apply -> report, on one LB node.

Two ways in, one engine:
- `sync_to(revision, force=False)`: bring this node to at least that revision of the
  desired state and say what was done. Idempotent; the pipeline's Celery task calls it
  (and `keep_house` in a thread does the housekeeping below).
- `run(stop)`: what `slb l4-agent` does: a sync, then follow the store's change stream,
  with the housekeeping below on each tick.
One agent per node: `start` takes the node's lock in Redis (`l4.ownership`).

Both read the desired state through one follower of the store (`slb.storage.follow`): an
apply reads what changed, not the whole store. The agent keeps a view of the kernel's IPVS
(read in full at start and every `resync_interval_s`, which repairs drift). Per
revision it re-plans only what changed, and re-reads from the kernel just the virtual
services it touches: a real-server change costs a few netlink round trips at any scale.

Health checks and drains change weights in the kernel, never the desired state. When this
node becomes the VRRP MASTER, the node before it is likely dead: its peers' Envoys are
probed at once, and one that does not answer is out before its checks would fail twice
(`TAKEOVER_PROBE_S`). Each tick:
drains (delete real servers whose connections ended or timed out), retry after a failed
apply, periodic full resync, statistics.

The VIP guard (`l4.firewall`, an nftables table) drops what is addressed to a VIP but the
planned listeners' ports: opened before the VIPs and IPVS change, closed after they did.

What openslb made on the node is recorded in Redis before it is made, what the agent last
applied on the node's disk (`l4.ownership`); what it found (foreign services, drains,
failing servers, ...) in Redis for the console (`l4.report`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import redis

from l4 import health
from l4.drivers import Driver, DriverError
from l4.drivers.nft import NftDriver, NftError
from l4.firewall import (
    TABLE,
    Openings,
    OpeningsBook,
    canonical,
    held,
    listener_of,
    load_script,
    openings,
    rate_drops,
    update_script,
)
from l4.health import HealthChecker, Target
from l4.ipvs import (
    DeleteService,
    KernelState,
    ServiceKey,
    VirtualService,
    address_order,
    address_text,
    op_key,
)
from l4.ownership import AgentError, NodeLock, NodeTakenError, Ownership
from l4.plan import Changed, IPVSPlan, node_group_of, plan, unguarded
from l4.reconcile import DrainKey, reconcile, rescoped, update_view
from l4.report import OPERATIONS_SHOWN, SyncReport, findings
from l4.stats import IPVSCollector, StatsWriter
from l4.vip import VIPs, prepare_kernel
from l4.vrrp import Keepalived, TakeoverWatch, compile_instance, start_connection_sync
from slb.config import L4Settings
from slb.integrity import HOLDING, AppliedRecord, Guard
from slb.model import NodeGroup
from slb.resolve import DesiredState, Resolver, resolve
from slb.snapshot import Snapshot
from slb.storage.follow import Follower, Step
from slb.storage.status import StatusBoard
from slb.storage.store import Store

log = logging.getLogger(__name__)

RETRY_S = 10.0
"""After a failed apply, how long before the agent tries again on its own."""

TAKEOVER_PROBE_S = 0.3
"""How long a peer's Envoy has to answer when this node takes the VIPs over. The takeover
already says its node is likely dead, so one failure is enough; a live Envoy that is slow
misses its share for two checks' time, no longer."""


class L4Agent:
    def __init__(
        self,
        store: Store,
        settings: L4Settings,
        node: str,
        *,
        driver: Driver,
        vips: VIPs,
        stats_driver: Driver | None = None,
        keepalived: Keepalived | None = None,
        firewall: NftDriver | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.node = node
        self.driver = driver
        self.vips = vips
        self.keepalived = keepalived
        self.firewall = firewall
        """Loads the VIP guard (`l4.firewall`); None: no guard (`l4.vip_guard` off)."""
        self.opened: Openings | None = None
        """What the guard's table lets through now; None: unknown, so the next apply loads
        the whole table (after a start, a resync or a failure)."""
        # The table's sets and fixed rules as the first load left them (`l4.firewall.held`),
        # which a repair expects to find besides `opened`; and the scripts run so far, as a
        # repair's reading is stale if they moved meanwhile.
        self._guard_shape: str | None = None
        self._guard_writes, self._wanted_openings = 0, OpeningsBook()  # the plans' openings
        self.ownership = Ownership(store, node)
        self.lock = NodeLock(store, node)
        self.status = StatusBoard(store)
        self.report_key = store.key("l4", node, "report")
        self.health = HealthChecker(self._health_changed)
        self.takeovers = (
            TakeoverWatch(keepalived.vrrp.interface, self._took_over) if keepalived else None
        )
        self.collector = IPVSCollector(node, held=lambda: self.guard.alarm is not None)
        self.stats_writer = StatsWriter(store, node)
        self.stats_driver = stats_driver
        self._lock = threading.RLock()  # the kernel and the view: not held across store reads
        self._following = threading.RLock()  # one sync at a time, read to apply; before _lock
        self.view: KernelState | None = None
        self.owned: set[ServiceKey] = set()
        self.draining: dict[DrainKey, float] = {}
        self.foreign: set[ServiceKey] = set()
        self.blocked: set[ServiceKey] = set()
        self.plan: IPVSPlan | None = None
        self.follower = Follower(store)
        """The desired state, moved forward by the change stream; plans are made from it."""
        self.applied_record = AppliedRecord(Path(settings.state_dir) / f"{node}.applied.json")
        alarm = partial(self.status.l4_alarm, node)
        self.guard = Guard(f"l4 agent of {node}", alarm, serves="IPVS services")
        self._targets = health.TargetsBook()
        self.desired: dict[ServiceKey, VirtualService] = {}
        self._consistent = False
        """The view equals `desired` (the last converge applied everything)."""
        self.revision = 0
        """The newest revision this node serves."""
        self.seen_revision = 0
        """The newest revision the agent has read (served, or failed and to be retried):
        where the follower was when the agent last planned."""
        self.resolver = Resolver()
        """This node's group's desired state, resolved again only where changes reach."""
        self.failed_revision: int | None = None
        self.bound_vips: tuple[str, ...] | None = None
        self._last_resync = self._last_stats = self._last_failure = 0.0  # monotonic times
        self._suspects: set[ServiceKey] = set()
        """Services a drift check found different in the kernel: read again and repaired by
        the next converge."""
        # a repair asked for; the stats driver's socket, read by one thread at a time
        self._repair_wanted, self._reading = threading.Event(), threading.Lock()

    @property
    def targets(self) -> dict[Target, list[ServiceKey]]:
        """What each health target decides: the services whose weights it sets."""
        return self._targets.targets

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> L4Agent:
        """Take the node's lock, prepare the kernel, load the records of what the agent made
        and applied. The first sync reads the kernel's IPVS in full."""
        self.lock.hold()
        prepare_kernel()
        if self.settings.conn_sync_interface:
            for error in start_connection_sync(
                self.settings.conn_sync_interface, self.settings.vrrp_router_id
            ):
                log.error("%s: established connections will not survive a failover", error)
        with self._lock:
            self.guard.applied, served = self.applied_record.load()  # the disk's, and Redis'
            owned = {ServiceKey.decode(key) for key in served}
            self.owned, self.view = self.ownership.load() | owned, None
        self.health.start()
        if self.takeovers is not None:
            self.takeovers.start()
        return self

    def stop(self) -> None:
        if self.takeovers is not None:
            self.takeovers.stop()
        self.health.stop()
        self.lock.release()

    # -- the ways in -----------------------------------------------------------------------

    def sync_to(self, revision: int, *, force: bool = False) -> SyncReport:
        """Bring this node to at least `revision`; nothing is read if it is there already.

        `force` (the pipeline's periodic re-assertion): read the kernel in full and repair it
        even if the node believes it is up to date.
        """
        if force:
            return self.repair()
        with self._lock:
            if self.revision >= revision and self.failed_revision is None and self.plan:
                return SyncReport(self.node, self.plan.group, self.revision, already=True)
        return self.sync()

    def sync(self, *, full: bool = False) -> SyncReport:
        """Apply the newest desired state; re-plan only what changed since the last plan
        (`full`: read and plan everything). The store is read outside the kernel's lock: a
        hung Redis link holds up the next sync, never the next depool."""
        with self._following:
            if full:
                self.follower.reset()
            return self._apply_step(self.follower.poll())

    def _apply_step(self, step: Step) -> SyncReport:
        """Apply the desired state the follower has stepped to. Only what the step says
        changed is re-planned, if the last plan was made where the follower stood before
        it; everything after a fresh snapshot, or when a failure came between. A store that
        cannot be trusted (`slb.integrity`) is not applied: the node keeps what it serves.
        Only the kernel work takes the kernel's lock: Redis writes wait outside it."""
        if not self.guard.admit(step.snapshot, partial(self._removal, step.snapshot)):
            self.follower.reset()  # read afresh next time: it may have been rebuilt
            group, why = self.plan.group if self.plan else None, f"{HOLDING}{self.guard.alarm}"
            self._record(report := SyncReport(self.node, group, self.revision, errors=[why]))
            return report
        planned_at = self.plan.revision if self.plan is not None else None
        changed = None
        if step.changes is not None and planned_at == self.seen_revision:
            changed = Changed.from_ops(op for change in step.changes for op in change.ops)
        snapshot = step.snapshot
        try:  # resolve only this node's group: a node's work grows with what it serves
            scope = self._group({k: s.obj for k, s in snapshot.of(NodeGroup).items()})
        except AgentError:
            scope = None  # apply_state reports it
        resolved = self.resolver.state
        touched = None
        if (
            step.changes is not None
            and resolved is not None
            and resolved.revision == self.seen_revision
            and self.resolver.node_group == scope
        ):
            touched = [(kind, key) for change in step.changes for _, kind, key in change.ops]
        if self.resolver.node_group != scope:
            self.resolver = Resolver(scope)
        self.seen_revision = snapshot.revision
        report = self.apply_state(self.resolver.update(snapshot, touched), changed)
        before, owned = self.guard.applied, set(self.owned)
        self.guard.applied_now(snapshot)
        self.applied_record.save(self.guard.applied, owned, ServiceKey.encode)
        if before is not None and before.store_id != snapshot.store_id:
            self.ownership.add(owned)  # the record was lost with the store
        return report

    def _removal(self, snapshot: Snapshot) -> tuple[int, int]:
        """How many virtual services the node serves, and how many `snapshot` would keep."""
        try:
            group = self._group({k: s.obj for k, s in snapshot.of(NodeGroup).items()})
        except AgentError:
            return 0, 0  # nothing is applied: apply_state reports it
        kept = plan(resolve(snapshot, node_group=group), self.node, group).services
        with self._lock:
            served = self.plan.services if self.plan else self.driver.dump().services  # restarted
        return len(served), len(kept)

    def apply_state(self, state: DesiredState, changed: Changed | None = None) -> SyncReport:
        """Program this node for `state` (re-plan only what `changed` says, if given): VIP
        guard, VIPs, IPVS; then the report, after the kernel's lock: a hung link holds it
        up, not a depool."""
        with self._lock:
            report = self._program(state, changed)
        self._record(report)
        return report

    def _program(self, state: DesiredState, changed: Changed | None) -> SyncReport:
        """`apply_state`'s kernel work, under the kernel's lock."""
        try:
            group = self._group(state.node_groups)
        except AgentError as exc:
            self.failed_revision = state.revision
            self._last_failure = time.monotonic()
            return SyncReport(self.node, None, self.revision, errors=[str(exc)])
        new_plan = plan(state, self.node, group, previous=self.plan, changed=changed)
        if self.firewall is None:
            new_plan = unguarded(new_plan)
        wanted_vips = new_plan.vips
        wanted_open = self._wanted_openings.openings(
            new_plan.vips, new_plan.services.keys(), new_plan.acls, new_plan.rates
        )
        added: list[str] = []
        removed: list[str] = []
        vip_errors: list[str] = []
        served = self.revision
        guard_errors = self._guard(wanted_open, widen=True)  # a new VIP is guarded when bound
        if wanted_vips != self.bound_vips:
            added = sorted(set(wanted_vips) - self.vips.bound(), key=address_order)
            vip_errors += self.vips.add(added)
        report = self.apply_plan(new_plan)
        draining = self._departing_vips(new_plan)
        if wanted_vips != self.bound_vips:
            kept = set(wanted_vips) | draining  # a removed listener drains on its VIP
            removed = sorted(self.vips.bound() - kept, key=address_order)
            vip_errors += self.vips.remove(removed)
            announced = tuple(sorted(kept, key=address_order))
            vip_errors += self._announce(new_plan.group, announced)
            self.bound_vips = None if vip_errors or draining else wanted_vips
        if not guard_errors:  # close what is served no more
            left = self._left_over(new_plan, bool(vip_errors), draining)
            guard_errors = self._guard(wanted_open | left)
        report.vips_added, report.vips_removed = added, removed
        if vip_errors or guard_errors:
            report.errors += vip_errors + guard_errors
            self.failed_revision = state.revision
            self._last_failure = time.monotonic()
            report.revision = self.revision = served
        return report

    def _guard(self, wanted: Openings, *, widen: bool = False) -> list[str]:
        """Bring the VIP guard to `wanted`; return what failed. `widen`: to `wanted` and what
        it lets through now, so that before IPVS and the VIPs change, nothing still served
        is closed and a VIP about to be bound is already guarded.

        A failure leaves the table as it was (one nft transaction): traffic keeps flowing,
        and the next apply loads the whole table again."""
        if self.firewall is None:
            return []
        known = self.opened
        target = wanted | known if widen and known is not None else wanted
        if target == known:
            return []
        script = load_script(target) if known is None else update_script(known, target)
        self._guard_writes += 1
        try:
            self.firewall.run(script)
        except NftError as exc:
            self.opened = None
            log.error("VIP guard: %s", exc)
            return [f"VIP guard: {exc}"]
        self.opened = target
        if known is None and self._guard_shape is None:  # once: the shape never changes
            found = self._guard_held()
            self._guard_shape = found[0] if found and found[1] == canonical(target) else None
        return []

    def _guard_held(self) -> tuple[str, Openings] | None:
        """What the guard's table holds now (`l4.firewall.held`); None: unreadable."""
        if self.firewall is None:
            return None
        try:
            return held(self.firewall.list_json("table", TABLE))
        except NftError as exc:
            log.warning("VIP guard: cannot read the table: %s", exc)
            return None

    def _guard_intact(self, opened: Openings | None) -> bool:
        """Whether the table holds what the agent loaded: its shape and `opened`. Read and
        compared outside the kernel's lock (O(listeners))."""
        if opened is None or self._guard_shape is None:
            return False
        intact = self._guard_held() == (self._guard_shape, canonical(opened))
        if not intact:
            log.warning("VIP guard: the table is not what the agent loaded: loading it again")
        return intact

    def _left_over(self, planned: IPVSPlan, vips_failed: bool, draining: set[str]) -> Openings:
        """What the node still serves that the plan no longer wants (a failed apply, or a
        removed listener draining): the services openslb holds in the kernel but no longer
        plans, the VIPs of those draining, and, if a VIP change failed, every VIP bound."""
        bound = self.vips.bound() if vips_failed else draining
        return openings(bound, self._unplanned(planned))

    def _departing_vips(self, planned: IPVSPlan) -> set[str]:
        """VIPs of services no longer planned that still drain their connections."""
        unplanned = self._unplanned(planned)
        return {key.address for key in unplanned if key.protocol != "FWM"} - set(planned.vips)

    def _unplanned(self, planned: IPVSPlan) -> list[ServiceKey]:
        """The services openslb holds in the kernel that `planned` does not: a set
        difference, so the planned ones cost nothing per change."""
        services = self.view.services if self.view is not None else {}
        return [key for key in services.keys() - planned.services.keys() if key in self.owned]

    def _announce(self, group: str | None, vips: tuple[str, ...]) -> list[str]:
        """Hand the VIPs to keepalived, whose VRRP MASTER answers for them (l4.vrrp)."""
        if self.keepalived is None:
            return []
        vrrp = self.keepalived.vrrp
        return self.keepalived.update(compile_instance(group, vips, vrrp, self.node))

    def apply_plan(self, new_plan: IPVSPlan, *, full: bool = False) -> SyncReport:
        """Program IPVS for a plan: health weights applied, then reconcile and apply.

        `full`: read the whole kernel first instead of trusting the agent's view of it.
        """
        started = time.monotonic()
        with self._lock:
            if full:
                self.view = None
            self.plan = new_plan
            self.health.change_targets(
                *self._targets.update(new_plan.services, new_plan.health_checks)
            )
            before, self.desired = self.desired, self._weighed(new_plan)
            suspects, self._suspects = self._suspects, set()
            ops, errors = self._converge(before, suspects)
            errors += [
                f"{key} is held by a virtual service openslb does not own: not programmed"
                for key in sorted(self.blocked)
            ]
        report = SyncReport(
            node=self.node,
            group=new_plan.group,
            revision=new_plan.revision,
            operations=[str(op) for op in ops[:OPERATIONS_SHOWN]],
            operation_count=len(ops),
            errors=errors,
            problems=list(new_plan.problems),
            seconds=time.monotonic() - started,
        )
        with self._lock:
            if errors:
                self.failed_revision = new_plan.revision
                self._last_failure = time.monotonic()
                report.revision = self.revision
            else:
                self.revision = new_plan.revision
                self.failed_revision = None
        return report

    def request_repair(self) -> None:
        """Have the housekeeping `repair` drift on its next tick: the pipeline's
        re-assertion, off the task's path (a node's worker runs one task at a time)."""
        self._repair_wanted.set()

    def repair(self, *, periodic: bool = False) -> SyncReport:
        """Read the kernel in full and put back what drifted from the plan; list the VIPs
        again, and load the guard's table again if it is not what the agent loaded
        (`periodic`: the agent's own, every resync_interval_s).

        The full reads (seconds for 1,000 services on a slow node) are made outside the
        kernel's lock, IPVS on the stats driver's socket, so a change that comes meanwhile
        is applied at once; then only the services that differ from the agent's view are
        read again, under the lock, and reconciled. Without a view or a stats driver:
        `resync`, everything under the lock."""
        with self._lock:
            known = self.view is not None
            opened, guard_writes = self.opened, self._guard_writes
        if not known or self.stats_driver is None:
            return self.resync(reread_store=False)
        with self._reading:
            fresh = self.stats_driver.dump(pause=self._after_changes)
        guard_intact = self._guard_intact(opened)
        with self._lock:
            if self.view is not None:  # else a failure came between: all is read again
                view = self.view.services
                self._suspects |= {
                    key
                    for key in fresh.services.keys() | view.keys()
                    if fresh.services.get(key) != view.get(key)
                }
            self.bound_vips = None
            if not (guard_intact and guard_writes == self._guard_writes):
                self.opened = None  # the next apply loads the whole table
            if periodic:
                self._last_resync = time.monotonic()
        return self.sync()

    def resync(self, *, reread_store: bool = True) -> SyncReport:
        """Read the kernel in full, under the kernel's lock, and repair it to the current
        plan (`reread_store`: read the store and plan everything again too). `repair` is
        the way that does not hold changes up."""
        with self._lock:
            self.view = self.bound_vips = self.opened = None
        return self.sync(full=reread_store)

    # -- the engine ------------------------------------------------------------------------

    def _group(self, node_groups: Mapping[str, NodeGroup]) -> str | None:
        if self.settings.node_group:
            return self.settings.node_group
        groups = node_group_of(node_groups, self.node)
        if len(groups) > 1:
            raise AgentError(
                f"node {self.node!r} is in several node groups ({', '.join(groups)}): "
                "set l4.node_group"
            )
        return groups[0] if groups else None

    def _weighed(self, plan: IPVSPlan) -> dict[ServiceKey, VirtualService]:
        """The plan's services as health checks have them: failing servers weigh 0."""
        return health.effective(
            plan.services, plan.health_checks, self.health.down(), self.settings.healthy_floor
        )

    def _converge(
        self, before: dict[ServiceKey, VirtualService], force: Iterable[ServiceKey] = ()
    ) -> tuple[list[Any], list[str]]:
        """Reconcile the kernel with `self.desired` (it was `before`); return (operations,
        errors).

        With a view of the kernel, only services that differ from it (and `force`) are
        re-read and reconciled; without one, everything is. After a converge that fully
        succeeded, the view equals what was desired then (but for drains and blocked
        services), so only services whose desired object is not the same object as
        before can differ: the check is by identity, not a comparison of every service.
        """
        scope: set[ServiceKey] | None = None
        consistent, self._consistent = self._consistent, False  # until this one succeeds
        if self.view is None:
            self.view = self.driver.dump()
            self._last_resync = time.monotonic()
        else:
            view, desired = self.view.services, self.desired
            if consistent:
                candidates = {k for k, want in desired.items() if want is not before.get(k)}
                candidates.update(k for k in before if k not in desired)
                candidates |= self.blocked
                candidates.update(key for key, _ in self.draining)
            else:
                candidates = desired.keys() | self.owned
            scope = {k for k in candidates if view.get(k) != desired.get(k)}
            scope.update(force)
            if not scope:
                self._consistent = consistent
                return [], []
            self._refresh(scope)
        result = reconcile(
            self.desired,
            self.view,
            self.owned,
            draining=self.draining,
            now=time.time(),
            drain_timeout=self.settings.drain_timeout_s,
            scope=scope,
        )
        if result.claimed:
            self.ownership.add(result.claimed)
            self.owned |= result.claimed
        failures = self.driver.apply(result.ops) if result.ops else []
        errors = [str(f) for f in failures]
        self._consistent = not failures
        if failures:
            touched = {op_key(op) for op in result.ops}
            self._refresh(touched)
            kept = {k for k in self.owned if k in result.owned or k in self.view.services}
        else:
            update_view(self.view, result.ops)
            kept = set(result.owned)
        self.ownership.remove(self.owned - kept)
        self.owned = kept
        self.draining = result.draining
        self.foreign = rescoped(self.foreign, scope, result.foreign)
        self.blocked = rescoped(self.blocked, scope, result.blocked)
        if result.ops:
            log.info("applied %d IPVS operations (%d failed)", len(result.ops), len(failures))
            for op in result.ops:
                log.debug("%s", op)
        for error in errors:
            log.error("IPVS: %s", error)
        return list(result.ops), errors

    def _refresh(self, keys: Collection[ServiceKey]) -> None:
        """Re-read these services from the kernel into the view."""
        assert self.view is not None
        fresh = self.driver.dump(keys)
        services, counters = self.view.services, self.view.counters
        for key in keys:
            old = services.pop(key, None)
            for dest in old.dests if old else ():
                counters.pop((key, dest.key), None)
            if key in fresh.services:
                services[key] = fresh.services[key]
        counters.update(fresh.counters)

    def _health_changed(self, target: Target, healthy: bool) -> None:
        if self.targets.get(target):
            self._reweigh()

    def _reweigh(self) -> None:
        """Program the weights the health checks give now. The kernel under the lock, the
        report after it: a hung Redis link delays the report, never the next depool."""
        with self._lock:
            if self.plan is None:
                return
            before, self.desired = self.desired, self._weighed(self.plan)
            report = self._findings(self._converge(before)[1])
        self._publish(report)

    def _took_over(self, added: set[str]) -> None:
        """Addresses appeared on the VRRP interface: if they are VIPs, this node is MASTER.

        Its peers' Envoys are probed at once; one that does not answer within
        TAKEOVER_PROBE_S is out now, so the dead node's share of new L7 flows moves to the
        survivors at the takeover rather than after two failed checks (2-4 s)."""
        vips = {address_text(address) for address in added}
        with self._lock:
            plan = self.plan
            if plan is None or vips.isdisjoint(plan.vips):
                return
            peers = self._peer_envoys(plan)
        log.info("this node took VIPs over (VRRP MASTER); probing %d peer Envoys", len(peers))
        if self.health.recheck(peers, TAKEOVER_PROBE_S, "no answer at the VRRP takeover"):
            self._reweigh()

    def _peer_envoys(self, plan: IPVSPlan) -> list[Target]:
        """The checked Envoys of the other nodes of this node's group."""
        state = self.resolver.state
        group = state.node_groups.get(plan.group) if state and plan.group else None
        own = (
            {address_text(n.address) for n in group.nodes if n.name == self.node}
            if group
            else set()
        )
        return [
            target
            for target, keys in self.targets.items()
            if target.address not in own and not plan.layer7.isdisjoint(keys)
        ]

    # -- housekeeping ----------------------------------------------------------------------

    def tick(self) -> None:
        """Drains, retry after failure, periodic resync, statistics: call about every second."""
        now = time.monotonic()
        if self.lock.lost:
            raise NodeTakenError("another l4 agent took this node's lock")
        if self._repair_wanted.is_set():
            self._repair_wanted.clear()
            self.repair()
        if self.failed_revision is not None and now - self._last_failure >= RETRY_S:
            log.info("retrying revision %s", self.failed_revision)
            self.sync()
        elif now - self._last_resync >= self.settings.resync_interval_s:
            # the kernel, where drift happens; the desired state moves by the change stream
            # (read afresh after a failure), and reading all of it again would hold the next
            # change up (about 10 s for 4,000 objects in the emulated lab VM)
            self.repair(periodic=True)
        elif self.draining:
            with self._lock:  # the report after the lock, as for a health change
                force = {key for key, _ in self.draining}
                ops, errors = self._converge(self.desired, force)
                report = self._findings(errors)
            self._publish(report)
            if any(isinstance(op, DeleteService) for op in ops):
                # A removed listener's last connection ended: its port and VIP go too, by
                # programming the state in force again (no kernel or store read).
                state = self.resolver.state
                if state is not None and self.plan is not None:
                    self.apply_state(state, Changed())
                else:
                    self.resync(reread_store=False)
        if (
            self.stats_driver is not None
            and now - self._last_stats >= self.settings.stats_interval_s
        ):
            self._last_stats = now
            self.sample_stats()

    def sample_stats(self) -> None:
        """One statistics sample: to Redis and to the Prometheus collector."""
        assert self.stats_driver is not None
        with self._reading:
            entries = self.stats_driver.stats(pause=self._after_changes)
        self.collector.update(entries)
        with self._lock:
            charted = self.plan.charted() if self.plan else {}
            limited = set(self.plan.rates) if self.plan else set()
        drops = self._rate_drops(limited)
        self.stats_writer.write(entries, time.time(), charted, drops)

    def _after_changes(self) -> None:
        """Wait while a change is being applied: the long reads of housekeeping (the drift
        repair's, the statistics') give way to it between services. In one process they
        take turns at the interpreter lock, and a change that made a few dozen Redis and
        netlink calls waited for it after each: 2,000 services' statistics in the emulated
        lab VM held a change up by seconds."""
        with self._following:
            pass

    def _rate_drops(self, limited: set[ServiceKey]) -> dict[ServiceKey, int]:
        """New connections the guard's rates dropped so far, per rate-limited listener."""
        if self.firewall is None or not limited:
            return {}
        try:
            found = rate_drops(self.firewall.list_json("chain", TABLE, "connection_rates"))
        except NftError as exc:
            log.warning("VIP guard: reading the rates' counters: %s", exc)
            return {}
        by_listener = {listener_of(key): key for key in limited}
        return {by_listener[name]: n for name, n in found.items() if name in by_listener}

    def keep_house(self, stop: threading.Event, every_s: float = 1.0) -> None:
        """`tick` until `stop`: for an agent hosted by a worker, which has no follow loop (so
        an agent holding its last good state looks at the store again here)."""
        while not stop.wait(every_s):
            try:
                self.tick()
                if self.guard.alarm is not None:
                    self.sync()
            except Exception:
                log.exception("l4 housekeeping failed; trying again")

    def run(self, stop: threading.Event, block_ms: int = 1000) -> None:
        """Follow the desired state until `stop` is set: apply every step that moved, and
        tick on every step. The follower waits out a Redis outage; one that strikes while
        applying is waited out here, and a sync follows any failure."""
        backoff = 1.0
        while not stop.is_set():
            try:
                self.sync()
                for step in self.follower.follow(stop, block_ms=block_ms):
                    if not step.quiet:
                        self._apply_step(step)
                    self.tick()
                    if self.guard.alarm:  # holding: health checks go on; read again soon
                        stop.wait(RETRY_S / 10)
                    backoff = 1.0
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("Redis unavailable (%s); retrying in %.0f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except AgentError as exc:
                log.error("%s", exc)
                self._report_failure(str(exc))
                stop.wait(RETRY_S)
            except (OSError, DriverError) as exc:
                log.exception("cannot read or program the kernel")
                with self._lock:
                    self.view = None
                self._report_failure(f"kernel: {exc}")
                stop.wait(RETRY_S)

    # -- reporting -------------------------------------------------------------------------

    def _record(self, report: SyncReport) -> None:
        """Status board entry and the node's findings, after a sync."""
        error = "; ".join(report.errors)[:2000] if report.errors else None
        self.status.report("l4", self.node, report.group or "", self.revision, error=error,
                           error_revision=self.failed_revision if error else None)  # fmt: skip
        self._publish(self._findings(report.errors, report.problems))

    def _report_failure(self, error: str) -> None:
        """On the status board: the loop failed, at the store's newest revision."""
        self.status.report("l4", self.node, "", self.revision, error=error,
                           error_revision=self.store.revision())  # fmt: skip

    def _publish(self, report: dict[str, Any]) -> None:  # after the kernel's lock, never in it
        self.store.redis.set(self.report_key, json.dumps(report))

    def _findings(self, errors: list[str], problems: list[str] | None = None) -> dict[str, Any]:
        return findings(self.revision, self.plan, self.desired, foreign=self.foreign,
                        blocked=self.blocked, draining=self.draining,
                        failing=self.health.errors(), errors=errors, problems=problems)  # fmt: skip
