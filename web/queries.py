"""Reads shared by the pages and the API: the current snapshot, statuses, filtered lists."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from slb.certificates import CertificateInfo, inspect
from slb.model import (
    Backend,
    Certificate,
    FieldError,
    Listener,
    LoadBalancer,
    ModelError,
    Protocol,
    Service,
)
from slb.selector import LabelSelector
from slb.snapshot import Snapshot, Stored
from slb.storage.envoyhosts import EnvoyHosts
from slb.storage.status import StatusBoard
from slb.storage.timeseries import (
    BACKEND_SERIES,
    SERIES,
    WORST_OF_NODES,
    Series,
    TimeSeries,
    bucketed,
    label_value,
)
from web.db import get_store, read_model
from web.state import Boards, ListenerState, ListenerStates

PROTOCOLS = tuple(p.value for p in Protocol)
STATES = ("served", "pending", "error")


@dataclass(frozen=True)
class View:
    """One consistent look at the desired state and at what the tiers report."""

    snapshot: Snapshot
    boards: Boards
    states: Mapping[str, ListenerState]

    @property
    def revision(self) -> int:
        return self.snapshot.revision


def current() -> View:
    store = get_store()
    model = read_model()
    snapshot, placed = model.placed(store)
    board = StatusBoard(store)
    boards = Boards(l4=board.all("l4"), l7=board.all("l7"))
    reports = tuple(
        sorted((s.tier, s.node, s.group, s.revision, s.error, s.error_revision)
               for b in (boards.l4, boards.l7) for s in b.values())
    )  # fmt: skip
    # worked out as pages ask, and kept while neither the revision nor a report moves
    states = model.derived(
        "states", (snapshot.revision, reports), lambda: ListenerStates(placed, boards)
    )
    return View(snapshot, boards, states)


def as_json(stored: Stored[Any]) -> dict[str, Any]:
    return read_model().as_json(stored)


@dataclass(frozen=True)
class ListenerFilter:
    q: str = ""
    load_balancer: str = ""
    protocol: str = ""
    owner: str = ""
    state: str = ""

    def keeps(self, listener: Listener, state: Callable[[], ListenerState]) -> bool:
        """`state` is asked for only when filtering by state: working one out costs."""
        return (
            (not self.q or self.q.lower() in listener.name)
            and (not self.load_balancer or listener.load_balancer == self.load_balancer)
            and (not self.protocol or listener.protocol.value == self.protocol)
            and (not self.owner or listener.owner.kind.value == self.owner)
            and (not self.state or state().state == self.state)
        )


def listeners(view: View, which: ListenerFilter) -> list[Stored[Listener]]:
    """The listeners `which` keeps, by name."""
    return [
        stored
        for _, stored in sorted(view.snapshot.of(Listener).items())
        if which.keeps(stored.obj, partial(view.states.__getitem__, stored.obj.name))
    ]


def listener_json(view: View, stored: Stored[Listener], nodes: bool = False) -> dict[str, Any]:
    status = view.states[stored.obj.name].as_json(nodes=nodes)
    return {**as_json(stored), "version": stored.revision, "status": status}


def load_balancer_json(view: View, stored: Stored[LoadBalancer]) -> dict[str, Any]:
    name = stored.obj.name
    return {
        **as_json(stored),
        "version": stored.revision,
        "listeners": sorted(
            k for k, s in view.snapshot.of(Listener).items() if s.obj.load_balancer == name
        ),
        "services": sorted(
            k for k, s in view.snapshot.of(Service).items() if s.obj.load_balancer == name
        ),
    }


def certificate_info(stored: Stored[Certificate]) -> CertificateInfo:
    return inspect(stored.obj.chain_pem)


def certificate_json(
    stored: Stored[Certificate], info: CertificateInfo | None = None
) -> dict[str, Any]:
    """A certificate as shown: its chain and what is in it; never its key."""
    info = info or certificate_info(stored)
    now = datetime.datetime.now(datetime.UTC)
    return {
        "name": stored.obj.name,
        "key_ref": stored.obj.key_ref,
        "chain_pem": stored.obj.chain_pem,
        "namespace": stored.obj.namespace,
        "allowed_namespaces": list(stored.obj.allowed_namespaces),
        "allowed_namespace_selector": (
            selector.model_dump(mode="json")
            if (selector := stored.obj.allowed_namespace_selector) is not None
            else None
        ),
        "owner": (
            stored.obj.owner.model_dump(mode="json") if stored.obj.owner is not None else None
        ),
        "version": stored.revision,
        "subject": info.subject,
        "issuer": info.issuer,
        "sans": list(info.sans),
        "serial": info.serial,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "days_left": info.days_left(now),
        "expires_soon": info.expires_soon(now),
        "chain_length": info.chain_length,
        "fingerprint_sha256": info.fingerprint_sha256,
    }


def parse_selector(value: Any) -> Any:
    """Selectors may be given in the `kubectl -l` form; the model takes the structured one."""
    if isinstance(value, str):
        try:
            return LabelSelector.parse(value).model_dump(mode="json")
        except ValueError as exc:
            message = str(exc).splitlines()[0]
            raise ModelError("Listener", [FieldError(field="selector", message=message)]) from None
    return value


def envoy_hosts(view: View, listener: str) -> dict[str, dict[str, str]]:
    """ADDRESS:PORT -> Envoy node -> its health there, as the Envoys reporting to the
    status board see it now (`slb.storage.envoyhosts`, written by `slb envoy-stats`)."""
    return EnvoyHosts(get_store()).of_listener(listener, view.boards.l7, time.time())


def listener_traffic(
    listener: Listener, backends: Iterable[Backend], since: float, until: float, step: float
) -> dict[str, Any]:
    """The listener's chart series over nodes, and its backends' (by ADDRESS:PORT)."""
    ts = TimeSeries(get_store())
    match = {"listener": listener.name}
    series = {}
    for name in SERIES:
        combine = max if name in WORST_OF_NODES else sum
        found = ts.range(name, since, until, match=match)
        series[name] = _points(bucketed(found, since, until, step, combine))
    hosts = {label_value(f"{b.address}:{b.port}"): f"{b.address}:{b.port}" for b in backends}
    by_backend: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in BACKEND_SERIES:
        grouped: dict[str, list[Series]] = {}
        for one in ts.range(name, since, until, match=match):
            grouped.setdefault(one.labels.get("backend", ""), []).append(one)
        for stored, found in grouped.items():
            host = hosts.get(stored, stored)
            by_backend.setdefault(host, {})[name] = _points(bucketed(found, since, until, step))
    return {"series": series, "backends": by_backend}


def _points(buckets: Iterable[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"t": t, "value": v} for t, v in buckets]
