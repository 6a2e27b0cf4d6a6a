"""`slb xds` and `slb envoy-bootstrap`: registered through the `openslb.commands` entry point."""

import click

from cmi.cli import not_implemented


@click.command("xds")
def xds() -> None:
    """Serve Envoy configuration over ADS (gRPC)."""
    not_implemented("xds", 7)


@click.command("envoy-bootstrap")
@click.option("--node-group", default="default", show_default=True)
def envoy_bootstrap(node_group: str) -> None:
    """Write an Envoy bootstrap for a node group."""
    not_implemented("envoy-bootstrap", 7)
