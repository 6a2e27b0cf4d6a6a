"""`slb l4-agent`: registered with `slb` through the `openslb.commands` entry point."""

import click

from cmi.cli import not_implemented


@click.command("l4-agent")
@click.option("--node", help="This LB node's name.")
def l4_agent(node: str | None) -> None:
    """Program this node's IPVS and VIPs from the desired state."""
    not_implemented("l4-agent", 4)
