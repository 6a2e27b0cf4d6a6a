"""The second driver: the `ipvsadm` tool, for hosts where operators want its exact behaviour.

Writes go in one batch through `ipvsadm -R`, the engine of `ipvsadm-restore`; the script
itself starts with `ipvsadm -C`, which would wipe services openslb does not own and every
connection's state with them, so it is not used here. Reads parse `ipvsadm -Ln --exact`
(and its `--persistent-conn`, `--thresholds`, `--stats`, `--rate` forms).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Collection, Iterator, Sequence

from l4.drivers import ApplyError, DriverError
from l4.ipvs import (
    AddDest,
    AddService,
    Counters,
    DeleteDest,
    DeleteService,
    Dest,
    DestStats,
    Forwarding,
    KernelState,
    Op,
    ServiceKey,
    ServiceStats,
    SetDest,
    SetService,
    Stats,
    Transport,
    VirtualService,
    address_text,
    join_host_port,
    sort_dests,
)

IPVSADM = "ipvsadm"

_SERVICE_OPTION = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service", "FWM": "-f"}
_FORWARD_OPTION: dict[Forwarding, str] = {"nat": "-m", "dr": "-g", "tun": "-i"}
_FORWARD_NAME: dict[str, Forwarding] = {"Masq": "nat", "Route": "dr", "Tunnel": "tun"}
_PROTOCOLS: tuple[Transport, ...] = ("TCP", "UDP", "SCTP", "FWM")


class IpvsadmError(DriverError):
    pass


def _service_args(key: ServiceKey) -> str:
    if key.protocol == "FWM":
        return f"-f {key.port}" + (" -6" if key.family == 6 else "")
    return f"{_SERVICE_OPTION[key.protocol]} {join_host_port(key.address, key.port)}"


def _service_options(service: VirtualService) -> str:
    line = f"{_service_args(service.key)} -s {service.scheduler}"
    if service.timeout:
        line += f" -p {service.timeout}"
    if "ops" in service.flags:
        line += " -o"
    sched_flags = [f for f in service.flags if f != "ops"]
    if sched_flags:
        line += f" -b {','.join(sched_flags)}"
    return line


def _dest_options(key: ServiceKey, dest: Dest, full: bool = True) -> str:
    line = f"{_service_args(key)} -r {join_host_port(dest.address, dest.port)}"
    if full:
        line += f" {_FORWARD_OPTION[dest.forwarding]} -w {dest.weight} -x {dest.upper}"
    return line


def rule_line(op: Op) -> str:
    """One line of `ipvsadm -R` input for an operation."""
    match op:
        case AddService(service):
            return f"-A {_service_options(service)}"
        case SetService(service):
            return f"-E {_service_options(service)}"
        case DeleteService(key):
            return f"-D {_service_args(key)}"
        case AddDest(key, dest):
            return f"-a {_dest_options(key, dest)}"
        case SetDest(key, dest):
            return f"-e {_dest_options(key, dest)}"
        case DeleteDest(key, dest):
            return f"-d {_dest_options(key, dest, full=False)}"
    raise TypeError(f"not an IPVS operation: {op!r}")


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return address_text(host), int(port)


def _service_line(tokens: list[str]) -> tuple[VirtualService, list[str]]:
    """A listing's service line -> the service, and the columns after its description."""
    protocol = tokens[0]
    if protocol not in _PROTOCOLS:
        raise IpvsadmError(f"unexpected ipvsadm line: {' '.join(tokens)}")
    rest = tokens[2:]
    if protocol == "FWM":
        family_v6 = bool(rest) and rest[0] == "IPv6"
        if family_v6:
            rest = rest[1:]
        key = ServiceKey("FWM", "::" if family_v6 else "0.0.0.0", int(tokens[1], 0))  # noqa: S104
    else:
        address, port = _split_host_port(tokens[1])
        key = ServiceKey(protocol, address, port)
    return VirtualService(key, ""), rest


def _parse_service_attributes(service: VirtualService, rest: list[str]) -> VirtualService:
    scheduler, flags, timeout = rest[0], list[str](), 0
    tokens = iter(rest[1:])
    for word in tokens:
        if word.startswith("("):
            flags += word.strip("()").split(",")
        elif word == "persistent":
            timeout = int(next(tokens))
        elif word == "ops":
            flags.append(word)
        elif word in ("mask", "pe"):
            next(tokens)
    return service._replace(scheduler=scheduler, flags=tuple(sorted(flags)), timeout=timeout)


def _listing(
    text: str,
) -> Iterator[tuple[VirtualService, list[str], list[tuple[str, int, list[str]]]]]:
    """(service, its columns, [(dest address, port, columns)]) for each service listed."""
    current: tuple[VirtualService, list[str], list[tuple[str, int, list[str]]]] | None = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0] in ("IP", "Prot"):
            continue
        if tokens[0] == "->":
            if tokens[1] == "RemoteAddress:Port":
                continue
            if current is None:
                raise IpvsadmError(f"real server before any service: {line}")
            address, port = _split_host_port(tokens[1])
            current[2].append((address, port, tokens[2:]))
            continue
        if current is not None:
            yield current
        service, rest = _service_line(tokens)
        current = (service, rest, [])
    if current is not None:
        yield current


class IpvsadmDriver:
    name = "ipvsadm"

    def __init__(self, binary: str = IPVSADM) -> None:
        self.binary = binary
        self._lines = 0

    @property
    def operations(self) -> int:
        return self._lines

    def close(self) -> None:
        pass

    def _run(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [self.binary, *args], input=stdin, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            raise IpvsadmError(f"ipvsadm {' '.join(args)}: {detail}")
        return result.stdout

    def dump(
        self, keys: Collection[ServiceKey] | None = None, *, pause: Callable[[], object] = bool
    ) -> KernelState:
        """(`pause` is never called: the listing is one process's output.)"""
        wanted = None if keys is None else set(keys)
        state = KernelState.empty()
        persistent = {
            (service.key, (address, port)): int(columns[1])
            for service, _, dests in _listing(self._run("-Ln", "--exact", "--persistent-conn"))
            for address, port, columns in dests
        }
        upper = {
            (service.key, (address, port)): int(columns[0])
            for service, _, dests in _listing(self._run("-Ln", "--exact", "--thresholds"))
            for address, port, columns in dests
        }
        for listed, rest, dests in _listing(self._run("-Ln", "--exact")):
            if wanted is not None and listed.key not in wanted:
                continue
            found = []
            for address, port, columns in dests:
                forward, weight, active, inactive = columns[:4]
                key = (listed.key, (address, port))
                forwarding = _FORWARD_NAME.get(forward, "dr")
                dest = Dest(address, port, int(weight), forwarding, upper.get(key, 0))
                found.append(dest)
                state.counters[key] = Counters(int(active), int(inactive), persistent.get(key, 0))
            service = _parse_service_attributes(listed, rest)._replace(dests=sort_dests(found))
            state.services[service.key] = service
        return state

    def stats(self, *, pause: Callable[[], object] = bool) -> list[ServiceStats]:
        state = self.dump()
        totals: dict[tuple[ServiceKey, tuple[str, int] | None], list[int]] = {}
        for option in ("--stats", "--rate"):
            for service, columns, dests in _listing(self._run("-Ln", "--exact", option)):
                totals.setdefault((service.key, None), []).extend(int(c) for c in columns[:5])
                for address, port, dest_columns in dests:
                    values = totals.setdefault((service.key, (address, port)), [])
                    values.extend(int(c) for c in dest_columns[:5])
        result = []
        for key, service in state.services.items():
            dest_stats = tuple(
                DestStats(
                    dest,
                    state.counters.get((key, dest.key), Counters()),
                    Stats(*totals.get((key, dest.key), [])),
                )
                for dest in service.dests
            )
            result.append(ServiceStats(service, Stats(*totals.get((key, None), [])), dest_stats))
        return result

    def apply(self, ops: Sequence[Op]) -> list[ApplyError]:
        if not ops:
            return []
        lines = [rule_line(op) for op in ops]
        self._lines += len(lines)
        result = subprocess.run(
            [self.binary, "-R"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
        # -R carries on past a refused line and exits 0; it names the refusal on stderr,
        # not the line, so the caller re-reads what it touched.
        if result.returncode != 0 or result.stderr.strip():
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            return [ApplyError(None, f"ipvsadm -R: {detail}")]
        return []
