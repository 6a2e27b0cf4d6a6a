"""The l4 agent assembled from settings: `slb l4-agent`, and the agent a node's worker hosts."""

from __future__ import annotations

from l4.agent import L4Agent
from l4.drivers import open_driver
from l4.drivers.nft import NftDriver
from l4.vip import VIPs
from l4.vrrp import VRRP, Keepalived
from slb.config import Settings
from slb.storage.store import Store


def build_agent(settings: Settings, node: str, *, stats: bool = True) -> L4Agent:
    """The agent of `node` as the settings describe it: `slb l4-agent`, or a node's worker.

    Not started: call `start()` (which takes the node's lock) before syncing.
    """
    store = Store.connect(settings.redis)
    vrrp = VRRP.from_settings(settings.l4)
    return L4Agent(
        store,
        settings.l4,
        node,
        driver=open_driver(settings.l4.driver),
        vips=VIPs(settings.l4.interface),
        stats_driver=open_driver(settings.l4.driver) if stats else None,
        keepalived=Keepalived(vrrp) if vrrp else None,
        firewall=NftDriver() if settings.l4.vip_guard else None,
    )
