"""`slb xds` and `slb envoy-bootstrap`: registered through the `openslb.commands` entry point."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slb import pki
from slb.config import Settings, XdsSettings, host_port
from slb.integrity import AppliedRecord
from slb.memory import CollectionWatch
from slb.storage.secrets import load_keyring
from slb.storage.store import Store

if TYPE_CHECKING:
    from l7.server import ServerTls


@click.command("xds")
@click.option("--bind", help="Serve ADS here (default: xds.bind).")
@click.option("--metrics-bind", help="Serve Prometheus metrics here (default: xds.metrics_bind).")
@click.option(
    "--insecure-plaintext", is_flag=True,
    help="Serve plaintext on a non-loopback address (any client could read private keys).",
)  # fmt: skip
@click.option(
    "-v", "--verbose", count=True, help="-v: log changes and connections; -vv: every message."
)
@click.pass_obj
def xds(
    settings: Settings,
    bind: str | None,
    metrics_bind: str | None,
    insecure_plaintext: bool,
    verbose: int,
) -> None:
    """Serve Envoy configuration over ADS (gRPC), State of the World and Delta.

    With `xds.tls_cert`, `xds.tls_key` and `xds.tls_client_ca` set, only over mutual TLS;
    without them, only on loopback unless `--insecure-plaintext` says otherwise.
    """
    from l7.server import XdsServer  # noqa: PLC0415 - keep `slb --help` fast

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    levels = {0: logging.WARNING, 1: logging.INFO}
    log = logging.getLogger("openslb.xds")
    log.setLevel(levels.get(verbose, logging.DEBUG))
    tls = server_tls(settings.xds)
    bind = bind or settings.xds.bind
    if tls is None and not _loopback(bind):
        if not insecure_plaintext:
            raise click.UsageError(
                f"xds.bind {bind} is not loopback and xds.tls_cert, tls_key, tls_client_ca are "
                "not set: any client that names a node group would get its private keys. "
                "Set them (`slb pki`), or pass --insecure-plaintext"
            )
        log.warning("xds: serving plaintext on %s (--insecure-plaintext)", bind)
    CollectionWatch(freeze_survivors=True).install()
    store = Store.connect(settings.redis)
    server = XdsServer(
        store,
        bind=bind,
        metrics_bind=settings.xds.metrics_bind if metrics_bind is None else metrics_bind,
        tls=tls,
        record=AppliedRecord(Path(settings.xds.state_dir) / "xds.applied.json"),
        keyring=load_keyring(settings.secrets),
    )

    async def run() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await server.serve(stopped)

    asyncio.run(run())


def server_tls(xds: XdsSettings) -> ServerTls | None:
    """The server's mutual TLS from the settings (all three or none), files checked."""
    from l7.server import ServerTls  # noqa: PLC0415

    if not pki.tls_settings({"xds.tls_cert": xds.tls_cert, "xds.tls_key": xds.tls_key,
                             "xds.tls_client_ca": xds.tls_client_ca}):  # fmt: skip
        return None
    return ServerTls(xds)


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def _loopback(bind: str) -> bool:
    host = host_port(bind, "xds.bind")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    "--all-stats",
    is_flag=True,
    help="Keep every Envoy statistic (about 250 a Service), not only those openslb charts and "
    "alerts on: each read of /stats, Prometheus' too, then holds Envoy's main thread longer.",
)
@click.option("--tls-cert", help="Client certificate for mTLS to xDS (default: xds.client_cert).")
@click.option("--tls-key", help="Its private key file (default: xds.client_key).")
@click.option("--tls-ca", help="CA of the xDS server's certificate (default: xds.server_ca).")
@click.option(
    "--tls-server-name", help="Name the xDS server's certificate must carry (default: its host)."
)
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
    all_stats: bool,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tls_server_name: str | None,
    out: Path | None,
) -> None:
    """Write the bootstrap of an Envoy in a node group (JSON, which Envoy reads as YAML).

    With a client certificate, its key and the server's CA, Envoy reaches xDS over mutual
    TLS, checking the server's certificate for the xDS host name (or --tls-server-name).
    """
    from l7.bootstrap import XdsTls, bootstrap  # noqa: PLC0415

    if stats_port and _unspecified(stats_address):
        raise click.UsageError(
            f"--stats-address {stats_address} would answer on every address of the node, "
            "its VIPs included (any client could read every tenant's listener stats): give "
            "the node's management address"
        )
    xds_address = xds_address or settings.xds.bind
    files = {
        "--tls-cert (xds.client_cert)": tls_cert or settings.xds.client_cert,
        "--tls-key (xds.client_key)": tls_key or settings.xds.client_key,
        "--tls-ca (xds.server_ca)": tls_ca or settings.xds.server_ca,
    }
    tls = None
    try:
        if pki.tls_settings(files):
            (cert_field, cert), (key_field, key), (ca_field, ca) = files.items()
            pki.load_identity(cert_field, cert, key_field, key)
            pki.load_certificates(ca_field, ca)
            host = host_port(xds_address, "xds")[0]
            if out is None:
                raise click.UsageError(
                    "--out is needed with mutual TLS: the bootstrap points Envoy at two files"
                    " written beside it, through which it watches its certificate and CA"
                )
            # Absolute, symlinks kept: a Secret volume's names point through ..data, which
            # changes; resolved, they would pin this version of the files.
            cert, key, ca = (os.path.abspath(f) for f in (cert, key, ca))
            sds_prefix = os.path.abspath(out.with_suffix(""))
            tls = XdsTls(cert, key, ca, tls_server_name or host, sds_prefix)
    except ValueError as exc:  # a ConfigError names the option, a bad --xds the address
        raise click.BadParameter(str(exc)) from None
    try:
        config = bootstrap(
            node_group,
            node_id,
            xds_address,
            delta=not sotw,
            admin_port=admin_port,
            stats_address=stats_address,
            stats_port=stats_port or None,
            max_connections=max_connections,
            tls=tls,
            all_stats=all_stats,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    text = json.dumps(config, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    for path, content in (tls.secret_files() if tls else {}).items():
        pki.write_public(Path(path), json.dumps(content, indent=2) + "\n")
    pki.write_public(out, text)


@click.command("envoy-stats")
@click.option("--node-id", required=True, help="The Envoy's xDS node id (its LB node).")
@click.option(
    "--admin", default="127.0.0.1:9901", show_default=True, help="Its admin API, HOST:PORT."
)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between samples.")
@click.pass_obj
def envoy_stats(settings: Settings, node_id: str, admin: str, interval: float) -> None:
    """Sample an Envoy's listener and backend statistics and its hosts' health into Redis,
    for the console's charts and backend tables. Runs beside the Envoy (the admin API is
    on loopback), as the LB node's Redis user."""
    import threading  # noqa: PLC0415

    from l7.stats import EnvoyStats, admin_reader  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    sampler = EnvoyStats(Store.connect(settings.redis), node_id, admin_reader(admin))
    sampler.run(interval, stopped)
