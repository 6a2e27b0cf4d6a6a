"""VIPs on a dummy interface openslb owns, and the kernel settings IPVS needs.

IPVS only sees packets addressed to the node itself, so each VIP is bound as a /32
(/128) on a dummy interface (`slb0` by default), as kube-proxy binds ClusterIPs on
kube-ipvs0. Every address on that interface is openslb's: VIPs no longer planned are
removed (link-local addresses the kernel adds are left alone). Every node of a group holds
the same VIPs, so none of them may answer ARP for them on its real interfaces; how
traffic reaches the nodes (routes, ECMP, BGP) is the lab issue's.

Kernel settings, written on every start:

- `net.ipv4.vs.conntrack=1`: IPVS keeps netfilter connection tracking entries for its
  connections, so NAT'd traffic passes stateful firewall rules and masquerading.
- `net.ipv4.vs.expire_nodest_conn=1`: when a real server is deleted, its connections are
  dropped at their next packet, so clients get a reset at once instead of retransmitting
  into nothing until they time out.
- `net.ipv4.vs.expire_quiescent_template=1`: when a real server goes to weight 0 (drain,
  failed health check), its persistence templates expire, so persistent clients move to
  another server on their next connection instead of sticking to the quiesced one.
- `net.ipv4.conf.all.arp_ignore=1`: answer ARP only for addresses on the interface the
  request came in on; VIPs live on the dummy interface, so they are never answered.
- `net.ipv4.conf.all.arp_announce=2`: never use a VIP as the source of an ARP request.

IPv6 needs no equivalent: Linux answers neighbour solicitations only for addresses on the
interface they arrive on. IPv6 VIPs skip duplicate address detection (`nodad`): every node
holds them by design.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

SYSCTLS: dict[str, str] = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}

IFA_F_NODAD = 0x02
RT_SCOPE_LINK = 253


class KernelSetupError(RuntimeError):
    pass


def prepare_kernel(proc: Path = Path("/proc/sys")) -> dict[str, str]:
    """Load IPVS and write the settings above; return the ones that changed (old values)."""
    result = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True, check=False)
    if result.returncode != 0 and not (proc / "net/ipv4/vs").exists():
        raise KernelSetupError(f"modprobe ip_vs failed: {result.stderr.strip()}")
    changed = {}
    for name, value in SYSCTLS.items():
        path = proc / name.replace(".", "/")
        try:
            old = path.read_text().strip()
            if old != value:
                path.write_text(value)
                changed[name] = old
        except OSError as exc:
            raise KernelSetupError(f"cannot set {name}={value}: {exc}") from None
    return changed


class VIPs:
    """The dummy interface and the VIPs bound on it, through pyroute2."""

    def __init__(self, interface: str = "slb0") -> None:
        from pyroute2 import IPRoute  # noqa: PLC0415 - heavy import, only where used

        self.interface = interface
        self.ipr: Any = IPRoute()
        self._index: int | None = None

    def close(self) -> None:
        self.ipr.close()

    def index(self) -> int:
        """The interface's index, creating it (a dummy, up) if it does not exist."""
        if self._index is None:
            found = self.ipr.link_lookup(ifname=self.interface)
            if not found:
                self.ipr.link("add", ifname=self.interface, kind="dummy")
                found = self.ipr.link_lookup(ifname=self.interface)
            self._index = int(found[0])
            self.ipr.link("set", index=self._index, state="up")
        return self._index

    def bound(self) -> set[str]:
        """The VIPs on the interface now."""
        addresses = set()
        for message in self.ipr.get_addr(index=self.index()):
            if message["scope"] == RT_SCOPE_LINK:
                continue
            addresses.add(message.get_attr("IFA_ADDRESS"))
        return addresses

    def add(self, addresses: Collection[str]) -> list[str]:
        """Bind these VIPs; return what failed (one already bound is no failure)."""
        return self._change("add", addresses, errno.EEXIST)

    def remove(self, addresses: Collection[str]) -> list[str]:
        """Unbind these VIPs; return what failed (one already gone is no failure)."""
        return self._change("del", addresses, errno.EADDRNOTAVAIL)

    def _change(self, command: str, addresses: Collection[str], harmless: int) -> list[str]:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        errors = []
        index = self.index()
        for address in addresses:
            flags = IFA_F_NODAD if ":" in address else 0
            try:
                self.ipr.addr(
                    command, index=index, address=address, prefixlen=_prefix(address), flags=flags
                )
            except NetlinkError as exc:
                if exc.code != harmless:
                    errors.append(f"VIP {address} on {self.interface}: {command}: {exc}")
        return errors

    def remove_interface(self) -> None:
        """Delete the interface and every VIP on it (tests; decommissioning a node)."""
        found = self.ipr.link_lookup(ifname=self.interface)
        if found:
            self.ipr.link("del", index=found[0])
        self._index = None


def _prefix(address: str) -> int:
    return 128 if ":" in address else 32
