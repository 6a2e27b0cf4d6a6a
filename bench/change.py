"""One change among N other Services: what each step between the store and a programmed
data plane costs, measured on its own so that a regression shows where it is (#18).

    .venv/bin/python -m bench.change                  # [--others 0 1000 10000] [--changes 40]

A real Redis (`devbed.redis`) holds N exposed Services of 10 endpoints, each with its own
L7 listener (`bench.l7.services_world`), on the LB node group `default` of one node. Then,
`--changes` times, one Service loses or regains an endpoint, written with `Store.apply`,
and each consumer's step is timed as its thread runs it:

- `store_advance`: `Follower.poll`, the change stream read and the snapshot moved past it;
- `resolve`: `Resolver.update` by what changed (and, for the record, `resolve` of the
  whole snapshot, the way before #18: `resolve_full`);
- `translate`: `SnapshotCache.build` on the resolver's state (`translate_full`: on a state
  from `resolve`, every listener looked at, the way before);
- `session`: one Delta ADS session (an Envoy that ACKs every response) from the new
  snapshot to synced (`session_full`: the session comparing everything, the way before);
- `l4_plan`: the l4 agent's own resolver (its group) and `l4.plan` by what changed;
- `console`: the console's read model after the change (`web.state.PlacementBook`) and the
  states of a page of 50 listeners, the node and Envoy having reported the new revision
  (`console_full`: every listener placed and its state worked out, the way before).

No Envoy, gRPC or kernel: those costs do not grow with N (one resource sent, one netlink
batch); `bench.pipeline` times the whole path with them. Medians are per change, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from bench import results_file
from bench.l7 import services_world
from bench.results_file import metric, percentile
from devbed.redis import RedisServer
from l4.plan import Changed, plan
from l7.cache import GroupSnapshot, SnapshotCache
from l7.server import gc_paused
from l7.session import Session
from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE
from slb.model import NodeGroup, Service
from slb.resolve import Resolver, Touched, resolve
from slb.snapshot import Put, Snapshot, namespace_labels
from slb.storage.follow import Follower
from slb.storage.status import TierStatus
from slb.storage.store import Store
from web.state import Boards, ListenerStates, PlacementBook, listener_states, placements

NODE, GROUP = "lb-a", "default"
STEPS = ("store_advance", "resolve", "resolve_full", "translate", "translate_full", "session",
         "session_full", "l4_plan", "console", "console_full")  # fmt: skip
PAGE = 50
"""Listeners on one page of the console."""
L7_STEPS = ("store_advance", "resolve", "translate", "session")
"""The xDS server's path, in order: their sum is the L7 tier's own cost of one change."""


def log(message: str) -> None:
    print(f"[bench.change] {message}", flush=True)


def synced(session: Session, target: GroupSnapshot) -> int:
    """Bring a Delta session to `target` as an Envoy would (subscribing to the endpoints
    and routes of what it receives, ACKing each response); how many responses it took."""
    pending = list(session.on_snapshot(target))
    if not session.types[CLUSTER].requested:
        pending += session.on_request(_request(CLUSTER)) + session.on_request(_request(LISTENER))
    for sent in range(10_000):  # bounded: one change is a handful of responses
        if not pending:
            return sent
        response = pending.pop(0)
        by_name = {CLUSTER: ENDPOINT, LISTENER: ROUTE}.get(response.type_url)
        if by_name is not None:
            new = {r.name for r in response.resources} - session.types[by_name].names
            if new:
                pending += session.on_request(_request(by_name, sorted(new)))
        pending += session.on_request(_request(response.type_url, nonce=response.nonce))
    raise RuntimeError("the session never synced")


def _request(type_url: str, names: list[str] | None = None, nonce: str = "") -> Any:
    return discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, resource_names_subscribe=names or [], response_nonce=nonce
    )


@contextmanager
def clock(step: str, times: dict[str, list[float]]) -> Iterator[None]:
    """Add the block's duration, in ms, to `times[step]`."""
    started = time.perf_counter()
    yield
    times[step].append((time.perf_counter() - started) * 1000)


def reported(revision: int) -> Boards:
    """The LB node and one Envoy of the group, both at `revision`."""
    now = time.time()
    return Boards(l4={NODE: TierStatus("l4", NODE, GROUP, revision, now)},
                  l7={"envoy-1": TierStatus("l7", "envoy-1", GROUP, revision, now)})  # fmt: skip


def console(book: PlacementBook, snapshot: Snapshot, touched: Touched,
            times: dict[str, list[float]]) -> None:  # fmt: skip
    """The console's steps for one change: a page of listeners, now and the way before."""
    boards = reported(snapshot.revision)
    with clock("console", times):
        page = sorted(book.update(snapshot, touched))[:PAGE]  # as the page sorts by name
        states = ListenerStates(book.placed, boards)
        shown = [states[name] for name in page]
    with clock("console_full", times):
        every = listener_states(snapshot, boards, placements(snapshot))
    assert shown == [every[name] for name in page], "both consoles agree"


def measure(redis: RedisServer, others: int, changes: int) -> dict[str, list[float]]:
    store = Store(redis.client(), prefix=f"bench-change-{others}")
    world = [NodeGroup.model_validate({"name": GROUP, "nodes": [
        {"name": NODE, "address": "198.18.255.1"}]}), *services_world(max(others, 1))]  # fmt: skip
    for start in range(0, len(world), 500):
        store.apply(Put(obj) for obj in world[start : start + 500])
    follower = Follower(store)
    first = follower.poll().snapshot
    resolver, l4_resolver, cache, full_cache = (
        Resolver(),
        Resolver(GROUP),
        SnapshotCache(),
        SnapshotCache(),
    )
    with gc_paused():
        state = resolver.update(first, None)
        l4_state = l4_resolver.update(first, None)
        groups = cache.build(state, {}, namespace_labels(first))
        full_cache.build(resolve(first), {}, namespace_labels(first))
    scoped, full = Session("bench-1", GROUP, delta=True), Session("bench-2", GROUP, delta=True)
    synced(scoped, groups[GROUP])
    synced(full, groups[GROUP])
    planned = plan(l4_state, NODE, GROUP)
    book = PlacementBook()
    book.update(first, None)
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    key = f"bench/svc{min(7, max(others, 1) - 1)}"
    for change in range(changes):
        service = first.get(Service, key)
        assert service is not None
        backends = service.backends["http"]
        changed_service = service.model_copy(
            update={"backends": {"http": backends[:-1] if change % 2 == 0 else backends}}
        )
        store.apply([Put(changed_service)])
        with gc_paused():
            with clock("store_advance", times):
                step = follower.poll()
            assert step.changes is not None
            touched = [(kind, k) for c in step.changes for _, kind, k in c.ops]
            snapshot, namespaces = step.snapshot, namespace_labels(step.snapshot)
            with clock("resolve", times):
                state = resolver.update(snapshot, touched)
            with clock("resolve_full", times):
                whole = resolve(snapshot)
            with clock("translate", times):
                groups = cache.build(state, {}, namespaces)
            with clock("translate_full", times):
                full_groups = full_cache.build(whole, {}, namespaces)
            with clock("session", times):
                synced(scoped, groups[GROUP])
            target = replace(full_groups[GROUP], since=None)
            with clock("session_full", times):
                synced(full, target)
            with clock("l4_plan", times):
                l4_state = l4_resolver.update(snapshot, touched)
                changed = Changed.from_ops(op for c in step.changes for op in c.ops)
                planned = plan(l4_state, NODE, GROUP, previous=planned, changed=changed)
            console(book, snapshot, touched, times)
        assert scoped.types[LISTENER].sent == full.types[LISTENER].sent, "both sessions agree"
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=int, nargs="+", default=[0, 1000, 10_000])
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    metrics: dict[str, dict[str, Any]] = {}
    notes: dict[str, Any] = {}
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-change-redis-"))).start()
    try:
        for others in args.others:
            suffix = {0: "", 1000: "_1k", 10_000: "_10k"}.get(others, f"_{others}")
            times = measure(redis, others, args.changes)
            medians = {step: statistics.median(v) for step, v in times.items()}
            for step, value in medians.items():
                metrics[f"{step}_ms{suffix}"] = metric(value, "ms")
            total = sum(medians[s] for s in L7_STEPS)
            before = medians["store_advance"] + sum(
                medians[f"{s}_full"] for s in ("resolve", "translate", "session")
            )
            metrics[f"l7_change_ms{suffix}"] = metric(total, "ms")
            metrics[f"l7_change_full_ms{suffix}"] = metric(before, "ms")
            notes[f"p99_ms{suffix}"] = {s: round(percentile(v, 99), 3) for s, v in times.items()}
            log(f"{others} others: " + ", ".join(f"{s} {m:.2f}" for s, m in medians.items())
                + f"; L7 path {total:.2f} ms (before: {before:.2f} ms)")  # fmt: skip
    finally:
        redis.stop()
    path = results_file.write("change", metrics, notes=notes)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
