"""VIP failover between the LB nodes of a group: keepalived's VRRP, configured by the agent.

Every node of a group holds the group's VIPs on slb0 and programs the same IPVS services,
so any of them can take the traffic; VRRP only decides which one the network sends it
to. The MASTER also holds the VIPs on `vrrp_interface`, where (with arp_ignore=1) it alone
answers ARP for them, and announces them with gratuitous ARP when it takes over (IPv6:
unsolicited neighbour advertisements). keepalived speaks the protocol; the agent writes
keepalived's instance from the desired state (`compile_instance`, pure) and makes it
reload (SIGHUP) when the result changes.

Choices, and why:
- VRRPv3 with `vrrp_advert_ms` (default 200 ms): a BACKUP takes over after three missed
  adverts plus a skew, about 0.7 s; VRRPv2's whole seconds would give 3.6 s. keepalived
  raises itself to real-time scheduling when it is late (`max_auto_priority`), so a node
  busy with other work does not miss its adverts.
- One address (of the adverts' family) is the instance's `virtual_ipaddress`, which
  keepalived requires (an instance without one is a fatal configuration error, so a group
  with no VIPs gets no instance); every other is `virtual_ipaddress_excluded`: not listed
  in the adverts, so there is no limit of 20 and IPv4 and IPv6 VIPs share one instance.
- Every node starts BACKUP with `nopreempt`: of nodes that start together the highest
  priority wins the first election; a node that starts later, or comes back, stays BACKUP,
  since moving the VIPs back would cut connections a second time for nothing.
- `vrrp_check` (e.g. a request to Envoy's /ready): failing twice puts the node in FAULT,
  which gives the VIPs up; passing twice brings it back.
- `vrrp_gateway`: addresses that move with the VIPs, e.g. the real servers' default
  gateway in NAT mode, so replies go back through the node that holds the connection.
- IPVS connection sync (`conn_sync_interface`): every node runs both the master and the
  backup sync daemon, so whichever node takes over knows the connections of the one
  before, and established connections carry on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slb.config import ConfigError, L4Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VRRP:
    """What keepalived needs to know about this node, from the `l4.vrrp_*` settings."""

    config: Path
    interface: str
    router_id: int
    priority: int
    advert_ms: int
    peers: tuple[str, ...] = ()
    check: str = ""
    gateway: tuple[tuple[str, str], ...] = ()
    """(address with prefix, interface) pairs that move with the VIPs."""
    pidfile: Path = Path("/run/keepalived.pid")

    @classmethod
    def from_settings(cls, settings: L4Settings) -> VRRP | None:
        """The node's VRRP settings, checked; None when `l4.vrrp_config` is empty (off)."""
        if not settings.vrrp_config:
            return None
        if not settings.vrrp_interface:
            raise ConfigError("l4.vrrp_interface: required when l4.vrrp_config is set")
        if not 1 <= settings.vrrp_router_id <= 255:
            raise ConfigError(f"l4.vrrp_router_id: 1-255, got {settings.vrrp_router_id}")
        if not 1 <= settings.vrrp_priority <= 254:
            raise ConfigError(f"l4.vrrp_priority: 1-254, got {settings.vrrp_priority}")
        if not 10 <= settings.vrrp_advert_ms <= 40950 or settings.vrrp_advert_ms % 10:
            raise ConfigError(
                f"l4.vrrp_advert_ms: 10-40950 in steps of 10, got {settings.vrrp_advert_ms}"
            )
        return cls(
            config=Path(settings.vrrp_config),
            interface=settings.vrrp_interface,
            router_id=settings.vrrp_router_id,
            priority=settings.vrrp_priority,
            advert_ms=settings.vrrp_advert_ms,
            peers=_peers(settings.vrrp_peers),
            check=settings.vrrp_check,
            gateway=_gateway(settings.vrrp_gateway, settings.vrrp_interface),
            pidfile=Path(settings.vrrp_pidfile),
        )


def _peers(raw: str) -> tuple[str, ...]:
    peers = tuple(part.strip() for part in raw.split(",") if part.strip())
    for peer in peers:
        try:
            ipaddress.ip_address(peer)
        except ValueError:
            raise ConfigError(f"l4.vrrp_peers: {peer!r} is not an address") from None
    return peers


def _gateway(raw: str, interface: str) -> tuple[tuple[str, str], ...]:
    """`ADDR/LEN [dev IFACE]`, comma-separated; the interface defaults to the VRRP one."""
    found = []
    for item in (part.split() for part in raw.split(",") if part.strip()):
        address, device = item[0], interface
        if len(item) == 3 and item[1] == "dev":
            device = item[2]
        try:
            if len(item) not in (1, 3) or "/" not in address:
                raise ValueError(address)
            ipaddress.ip_interface(address)
        except ValueError:
            raise ConfigError(
                f"l4.vrrp_gateway: {' '.join(item)!r} is not ADDR/LEN [dev IFACE]"
            ) from None
        found.append((address, device))
    return tuple(found)


def instance_name(group: str) -> str:
    return "openslb_" + re.sub(r"[^A-Za-z0-9_]", "_", group)


def compile_instance(group: str | None, vips: Sequence[str], vrrp: VRRP, node: str) -> str:
    """keepalived's configuration for this node's group: one VRRP instance holding its VIPs.

    With no group, or nothing to hold (no VIPs and no gateway), there is no instance, so
    keepalived gives up any addresses it held.
    """
    lines = [
        f"# Written by the openslb l4 agent of node {node}; it is rewritten on every change.",
        "",
    ]
    held = [(f"{vip}/{128 if ':' in vip else 32}", vrrp.interface) for vip in vips]
    held += vrrp.gateway
    # the adverts' family: the peers' (unicast), else IPv4's if there is one
    v6 = ":" in vrrp.peers[0] if vrrp.peers else all(":" in a for a, _ in held)
    primary = next((h for h in held if (":" in h[0]) == v6), None)
    if group is None or primary is None:
        lines.append(f"# No VIPs to hold ({'no node group' if group is None else 'none planned'}).")
        return "\n".join(lines) + "\n"
    name = instance_name(group)
    if vrrp.check:
        lines += [
            f"vrrp_script {name}_check {{",
            f'    script "{_quoted(vrrp.check)}"',
            f"    interval {_seconds(max(vrrp.advert_ms, 1000))}",
            f"    timeout {_seconds(max(vrrp.advert_ms, 1000))}",
            "    fall 2",
            "    rise 2",
            "}",
            "",
        ]
    lines += [
        f"vrrp_instance {name} {{",
        "    state BACKUP",
        "    nopreempt",
        "    version 3",
        f"    interface {vrrp.interface}",
        f"    virtual_router_id {vrrp.router_id}",
        f"    priority {vrrp.priority}",
        f"    advert_int {_seconds(vrrp.advert_ms)}",
    ]
    if vrrp.peers:
        lines += ["    unicast_peer {", *(f"        {peer}" for peer in vrrp.peers), "    }"]
    lines += ["    virtual_ipaddress {", f"        {primary[0]} dev {primary[1]}", "    }"]
    excluded = [f"        {a} dev {device}" for a, device in held if (a, device) != primary]
    if excluded:
        lines += ["    virtual_ipaddress_excluded {", *excluded, "    }"]
    if vrrp.check:
        lines += ["    track_script {", f"        {name}_check", "    }"]
    lines += ["}"]
    return "\n".join(lines) + "\n"


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}"


def _quoted(command: str) -> str:
    return command.replace("\\", "\\\\").replace('"', '\\"')


class Keepalived:
    """The file keepalived includes, and the signal that makes it re-read it."""

    def __init__(self, vrrp: VRRP) -> None:
        self.vrrp = vrrp

    def update(self, text: str) -> list[str]:
        """Write `text` if the file differs, then reload keepalived; return what failed."""
        path = self.vrrp.config
        try:
            if path.exists() and path.read_text() == text:
                return []
            path.parent.mkdir(parents=True, exist_ok=True)
            staged = path.with_name(f".{path.name}.tmp")
            staged.write_text(text)
            staged.replace(path)  # keepalived never reads half a file
        except OSError as exc:
            return [f"keepalived: cannot write {path}: {exc}"]
        return self.reload()

    def reload(self) -> list[str]:
        try:
            pid = int(self.vrrp.pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as exc:
            return [
                f"keepalived: cannot reload through {self.vrrp.pidfile} ({exc}): "
                "is it running? The VIPs fail over only while it is."
            ]
        return []


def start_connection_sync(interface: str, sync_id: int) -> list[str]:
    """Run IPVS's master and backup sync daemons on `interface` (idempotent)."""
    running = subprocess.run(
        ["ipvsadm", "-L", "--daemon"], capture_output=True, text=True, check=False
    ).stdout
    errors = []
    for role in ("master", "backup"):
        if f"{role} sync daemon" in running:
            continue
        result = subprocess.run(
            ["ipvsadm", "--start-daemon", role, "--mcast-interface", interface,
             "--syncid", str(sync_id)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            errors.append(f"IPVS {role} sync daemon on {interface}: {result.stderr.strip()}")
    return errors


RTM_NEWADDR = 20
IFA_ADDRESS = 1
RTMGRP_IFADDR = 0x10 | 0x100
"""RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR: the kernel's announcements of new addresses."""


def added_addresses(datagram: bytes, index: int) -> set[str]:
    """The addresses a netlink datagram says were added to interface `index`. Pure."""
    found: set[str] = set()
    offset = 0
    while offset + 16 <= len(datagram):
        length, kind = struct.unpack_from("=IH", datagram, offset)
        if length < 16:
            break
        if kind == RTM_NEWADDR and offset + 24 <= len(datagram):
            _, _, _, _, interface = struct.unpack_from("=BBBBI", datagram, offset + 16)
            at, end = offset + 24, min(offset + length, len(datagram))
            while interface == index and at + 4 <= end:
                size, attribute = struct.unpack_from("=HH", datagram, at)
                if size < 4 or at + size > end:
                    break
                payload = datagram[at + 4 : at + size]
                if attribute == IFA_ADDRESS and len(payload) in (4, 16):
                    found.add(str(ipaddress.ip_address(payload)))
                at += (size + 3) & ~3
        offset += (length + 3) & ~3
    return found


class TakeoverWatch:
    """Tells the agent at once when this node becomes MASTER, by what keepalived does then:
    it adds the VIPs to `vrrp_interface`, and the kernel announces each new address over
    netlink. No polling, and no notify script between keepalived and the agent.

    `on_added(addresses)` runs in the watch's thread with the addresses added to the
    interface in one burst (a takeover adds every VIP at once). The socket is made in
    `start`, in the caller's network namespace."""

    def __init__(self, interface: str, on_added: Callable[[set[str]], None]) -> None:
        self.interface = interface
        self._on_added = on_added
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="vrrp-takeover", daemon=True)

    def start(self) -> TakeoverWatch:
        netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        netlink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a burst of VIPs
        netlink.bind((0, RTMGRP_IFADDR))
        self._socket = netlink
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        assert self._socket is not None
        netlink, index = self._socket, 0
        while not self._stop.is_set():
            if not index:  # the interface may come later than the agent
                try:
                    index = socket.if_nametoindex(self.interface)
                except OSError:
                    index = 0
            if not select.select([netlink], [], [], 0.5)[0]:
                continue
            added: set[str] = set()
            try:
                while True:  # the whole burst: one call for a takeover's many VIPs
                    added |= added_addresses(netlink.recv(65536), index) if index else set()
                    if not select.select([netlink], [], [], 0.02)[0]:
                        break
            except OSError as exc:  # ENOBUFS: announcements were lost; say so and go on
                log.warning("watching %s for a VRRP takeover: %s", self.interface, exc)
            if added:
                try:
                    self._on_added(added)
                except Exception:
                    log.exception("handling a VRRP takeover failed")
