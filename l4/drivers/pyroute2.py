"""The default driver: IPVS over generic netlink, found through pyroute2, sent in batches.

pyroute2 resolves the IPVS generic-netlink family (the id the kernel gave it when ip_vs
loaded); `l4.drivers.netlink` encodes the requests and sends many per system call, which
is what makes a full apply of 11,000 rules as quick as `ipvsadm-restore` (see that
module for the measurements). The known pitfalls of pyroute2's own `IPVS` class cannot
bite here: every request carries the scheduler, and every real server its forwarding
method and weight; changes are SET commands, never pyroute2's `update` (which deletes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from l4.drivers import ApplyError
from l4.drivers import netlink as nl
from l4.ipvs import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    DestStats,
    KernelState,
    Op,
    ServiceKey,
    ServiceStats,
    SetDest,
    SetService,
    VirtualService,
    dest_order,
)


def ipvs_family_id() -> int:
    """The IPVS generic-netlink family id, asked of the kernel through pyroute2."""
    from pyroute2 import IPVS  # noqa: PLC0415 - heavy import, needed once

    ipvs = IPVS()
    try:
        family_id: int = ipvs.prid
    finally:
        ipvs.close()
    return family_id


class Pyroute2Driver:
    name = "pyroute2"

    def __init__(self) -> None:
        self.nl = nl.BatchSocket(ipvs_family_id())

    @property
    def operations(self) -> int:
        return self.nl.changes

    def close(self) -> None:
        self.nl.close()

    # -- reading ---------------------------------------------------------------------------

    def _services(
        self, keys: Collection[ServiceKey] | None
    ) -> list[tuple[memoryview, tuple[int, int]]]:
        if keys is None:
            messages = self.nl.dump(nl.Request(nl.CMD_GET_SERVICE))
        else:
            found = (
                self.nl.get(
                    nl.Request(nl.CMD_GET_SERVICE, nl.service_attr(nl.service_key_attrs(key)))
                )
                for key in keys
            )
            messages = [m for m in found if m is not None]
        spans = ((m, nl.message_attr(m, nl.ATTR_SERVICE)) for m in messages)
        return [(m, span) for m, span in spans if span is not None]

    def _read(
        self, keys: Collection[ServiceKey] | None, stats: bool, pause: Callable[[], object] = bool
    ) -> tuple[KernelState, list[ServiceStats]]:
        state = KernelState.empty()
        all_stats: list[ServiceStats] = []
        for message, span in self._services(keys):
            pause()
            service, service_stats = nl.decode_service(message, span)
            family = nl.FAMILIES[service.key.family]
            request = nl.Request(
                nl.CMD_GET_DEST, nl.service_attr(nl.service_key_attrs(service.key))
            )
            dest_stats = []
            for reply in self.nl.dump(request):
                dest_span = nl.message_attr(reply, nl.ATTR_DEST)
                if dest_span is not None:
                    dest_stats.append(DestStats(*nl.decode_dest(reply, dest_span, family, stats)))
            dest_stats.sort(key=lambda d: dest_order(d.dest))
            service = service._replace(dests=tuple(d.dest for d in dest_stats))
            state.services[service.key] = service
            for entry in dest_stats:
                state.counters[(service.key, entry.dest.key)] = entry.counters
            if stats:
                all_stats.append(ServiceStats(service, service_stats, tuple(dest_stats)))
        return state, all_stats

    def dump(
        self, keys: Collection[ServiceKey] | None = None, *, pause: Callable[[], object] = bool
    ) -> KernelState:
        return self._read(keys, stats=False, pause=pause)[0]

    def stats(self, *, pause: Callable[[], object] = bool) -> list[ServiceStats]:
        return self._read(None, stats=True, pause=pause)[1]

    # -- writing ---------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> list[ApplyError]:
        keys: dict[ServiceKey, bytes] = {}

        def named(key: ServiceKey) -> bytes:
            attr = keys.get(key)
            if attr is None:
                attr = keys[key] = nl.service_attr(nl.service_key_attrs(key))
            return attr

        requests = []
        for op in ops:
            match op:
                case AddDest(key, dest):
                    requests.append(nl.Request(nl.CMD_NEW_DEST, named(key) + nl.dest_attr(dest)))
                case SetDest(key, dest):
                    requests.append(nl.Request(nl.CMD_SET_DEST, named(key) + nl.dest_attr(dest)))
                case DeleteDest(key, dest):
                    request = nl.Request(nl.CMD_DEL_DEST, named(key) + nl.dest_attr(dest, False))
                    requests.append(request)
                case AddService(service):
                    requests.append(_service_request(nl.CMD_NEW_SERVICE, service))
                case SetService(service):
                    requests.append(_service_request(nl.CMD_SET_SERVICE, service))
                case DeleteService(key):
                    requests.append(nl.Request(nl.CMD_DEL_SERVICE, named(key)))
        try:
            failures = self.nl.execute(requests)
        except OSError as exc:
            return [ApplyError(None, f"netlink: {exc}")]
        return [
            ApplyError(ops[f.index] if f.index is not None else None, f.strerror or str(f))
            for f in failures
        ]


def _service_request(cmd: int, service: VirtualService) -> nl.Request:
    return nl.Request(cmd, nl.service_attr(nl.service_attrs(service)))
