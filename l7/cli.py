"""`slb xds` and `slb envoy-bootstrap`: registered through the `openslb.commands` entry point."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from cmi.config import Settings
from cmi.store import Store


@click.command("xds")
@click.option("--bind", help="Serve ADS here (default: xds.bind).")
@click.option("--metrics-bind", help="Serve Prometheus metrics here (default: xds.metrics_bind).")
@click.option(
    "-v", "--verbose", count=True, help="-v: log changes and connections; -vv: every message."
)
@click.pass_obj
def xds(settings: Settings, bind: str | None, metrics_bind: str | None, verbose: int) -> None:
    """Serve Envoy configuration over ADS (gRPC), State of the World and Delta."""
    from l7.server import XdsServer  # noqa: PLC0415 - keep `slb --help` fast

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    levels = {0: logging.WARNING, 1: logging.INFO}
    logging.getLogger("openslb.xds").setLevel(levels.get(verbose, logging.DEBUG))
    store = Store.from_url(settings.redis.url, settings.redis.prefix)
    server = XdsServer(
        store,
        bind=bind or settings.xds.bind,
        metrics_bind=settings.xds.metrics_bind if metrics_bind is None else metrics_bind,
    )

    async def run() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await server.serve(stopped)

    asyncio.run(run())


@click.command("envoy-bootstrap")
@click.option("--node-group", default="default", show_default=True, help="The LB node group.")
@click.option("--node-id", required=True, help="This Envoy's xDS node id (e.g. the LB node).")
@click.option("--xds", "xds_address", help="The xDS server, HOST:PORT (default: xds.bind).")
@click.option("--sotw", is_flag=True, help="State of the World ADS instead of Delta.")
@click.option("--admin-port", default=9901, show_default=True, help="Admin API, on 127.0.0.1.")
@click.option("--stats-address", default="127.0.0.1", show_default=True)
@click.option(
    "--stats-port", default=9902, show_default=True, help="/stats/prometheus; 0: no listener."
)
@click.option("--max-connections", default=100_000, show_default=True, help="Per Envoy.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout)."
)
@click.pass_obj
def envoy_bootstrap(
    settings: Settings,
    *,
    node_group: str,
    node_id: str,
    xds_address: str | None,
    sotw: bool,
    admin_port: int,
    stats_address: str,
    stats_port: int,
    max_connections: int,
    out: Path | None,
) -> None:
    """Write the bootstrap of an Envoy in a node group (JSON, which Envoy reads as YAML)."""
    from l7.bootstrap import bootstrap  # noqa: PLC0415

    try:
        config = bootstrap(
            node_group,
            node_id,
            xds_address or settings.xds.bind,
            delta=not sotw,
            admin_port=admin_port,
            stats_address=stats_address,
            stats_port=stats_port or None,
            max_connections=max_connections,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    text = json.dumps(config, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
