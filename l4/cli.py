"""`slb l4-agent`: registered with `slb` through the `openslb.commands` entry point."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
from types import FrameType

import click

from l4.drivers import DRIVERS
from slb.config import ConfigError, L4Settings, Settings, host_port


def check_settings(settings: L4Settings) -> None:
    """Refuse settings the agent cannot use, naming the key."""
    if settings.driver not in DRIVERS:
        raise ConfigError(f"l4.driver: {settings.driver!r} is not one of {', '.join(DRIVERS)}")
    if not 0.0 <= settings.healthy_floor <= 1.0:
        raise ConfigError(f"l4.healthy_floor: {settings.healthy_floor} is not between 0 and 1")
    for name in ("drain_timeout_s",):
        if getattr(settings, name) < 0:
            raise ConfigError(f"l4.{name}: must not be negative")
    for name in ("resync_interval_s", "stats_interval_s"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"l4.{name}: must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", settings.interface):
        raise ConfigError(f"l4.interface: {settings.interface!r} is not an interface name")
    if settings.metrics_listen:
        host_port(settings.metrics_listen, "l4.metrics_listen")


@click.command("l4-agent")
@click.option("--node", help="This LB node's name (default: the l4.node setting).")
@click.option(
    "--once", is_flag=True, help="Sync to the newest revision, print what was done as JSON, exit."
)
@click.pass_obj
def l4_agent(settings: Settings, node: str | None, once: bool) -> None:
    """Program this node's IPVS and VIPs from the desired state."""
    from l4.assembly import build_agent  # noqa: PLC0415 - keep `slb --help` light

    node = node or settings.l4.node
    if not node:
        raise click.UsageError("give --node NAME (or set l4.node)")
    try:
        check_settings(settings.l4)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agent = build_agent(settings, node, stats=not once)
    agent.start()
    try:
        if once:
            report = agent.sync()
            click.echo(json.dumps(report.as_dict(), indent=2))
            sys.exit(1 if report.errors else 0)
        if settings.l4.metrics_listen:
            from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

            registry = CollectorRegistry()
            registry.register(agent.collector)
            host, port = host_port(settings.l4.metrics_listen, "l4.metrics_listen")
            start_http_server(port, addr=host, registry=registry)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        agent.run(stop)
    finally:
        agent.stop()
