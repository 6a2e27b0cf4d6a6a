"""The only code that touches the kernel's IPVS: one interface, two implementations.

`pyroute2` talks generic netlink in batches (the default); `ipvsadm` feeds `ipvsadm -R`
(the engine behind `ipvsadm-restore`, without the flush that script starts with, so
services openslb does not own survive). Both run the same test suite in the lab VM.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple, Protocol

from l4.ipvs import KernelState, Op, ServiceKey, ServiceStats

DRIVERS = ("pyroute2", "ipvsadm")


class DriverError(RuntimeError):
    """The driver could not read the kernel's IPVS (writes report ApplyError instead)."""


class ApplyError(NamedTuple):
    """An operation the kernel refused (op None: the driver cannot tell which)."""

    op: Op | None
    message: str

    def __str__(self) -> str:
        return f"{self.op}: {self.message}" if self.op is not None else self.message


class Driver(Protocol):
    name: str

    @property
    def operations(self) -> int:
        """Changes requested of the kernel so far: netlink messages, or ipvsadm rule lines."""

    def dump(
        self, keys: Collection[ServiceKey] | None = None, *, pause: Callable[[], object] = bool
    ) -> KernelState:
        """Every virtual service with its real servers and their connection counts; with
        `keys`, only those (a missing one is absent from the result). `pause` is called
        between services, where a long read may wait for more urgent work."""

    def apply(self, ops: Sequence[Op]) -> list[ApplyError]:
        """Run `ops` in order; return what failed (empty: everything was applied)."""

    def stats(self, *, pause: Callable[[], object] = bool) -> list[ServiceStats]:
        """Traffic counters and rates of every service and real server (`pause`: as for
        `dump`)."""

    def close(self) -> None: ...


def open_driver(name: str) -> Driver:
    """The driver named in the settings (`l4.driver`)."""
    if name == "pyroute2":
        from l4.drivers.pyroute2 import Pyroute2Driver  # noqa: PLC0415 - load only the one used

        return Pyroute2Driver()
    if name == "ipvsadm":
        from l4.drivers.ipvsadm import IpvsadmDriver  # noqa: PLC0415

        return IpvsadmDriver()
    raise ValueError(f"l4.driver: unknown driver {name!r} (choose from {', '.join(DRIVERS)})")
