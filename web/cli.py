"""`slb console`: serve the console (waitress; HTTPS: cheroot), and `slb console create-admin`.

Registered through the `openslb.commands` entry point, so cmi never imports the console.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from slb import config, pki

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from web.tls import RotatingSSLAdapter


@click.group("console", invoke_without_command=True)
@click.option("--bind", help="HOST:PORT to serve on (default: console.bind, 127.0.0.1:8080).")
@click.pass_context
def console(ctx: click.Context, bind: str | None) -> None:
    """Serve the operator console and REST API (waitress; with console.tls_cert, HTTPS)."""
    if ctx.invoked_subcommand is not None:
        return
    import logging  # noqa: PLC0415

    import waitress  # noqa: PLC0415

    from web.app import create_app  # noqa: PLC0415

    settings: config.Settings = ctx.obj
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bind = bind or settings.console.bind
    try:
        host, port = config.host_port(bind, "console.bind")
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    console_settings = settings.console
    tls: RotatingSSLAdapter | None = None
    if pki.tls_settings(
        {"console.tls_cert": console_settings.tls_cert, "console.tls_key": console_settings.tls_key}
    ):  # the pair loads here, so a bad file is named before anything listens
        from web.tls import RotatingSSLAdapter  # noqa: PLC0415

        tls = RotatingSSLAdapter(console_settings.tls_cert, console_settings.tls_key)
    app = create_app(settings=settings)
    if not settings.secrets.key_file:
        logging.getLogger("openslb.console").warning(
            "secrets.key_file is not set: uploaded private keys are stored in Redis unencrypted"
        )
    scheme = "https" if tls else "http"
    click.echo(f"openslb console on {scheme}://{bind}/ (API: /api/v1, metrics: /metrics)", err=True)
    if tls:
        _serve_tls(app, host, port, console_settings.threads, tls)
        return
    waitress.serve(app, host=host, port=port, **waitress_options(console_settings))


def waitress_options(console: config.ConsoleSettings) -> dict[str, Any]:
    """How waitress serves the console. Forwarded headers count only from
    `console.trusted_proxy`, in waitress itself: it drops them from anyone else (so a
    client cannot pose as another address to the login throttle) before the app runs."""
    options: dict[str, Any] = {
        "threads": console.threads, "ident": "openslb", "clear_untrusted_proxy_headers": True,
    }  # fmt: skip
    if console.trusted_proxy:
        options.update(
            trusted_proxy=console.trusted_proxy,
            trusted_proxy_count=console.trusted_proxies,
            trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
        )
    return options


def _serve_tls(
    app: WSGIApplication, host: str, port: int, threads: int, adapter: RotatingSSLAdapter
) -> None:
    """HTTPS with cheroot, CherryPy's WSGI server: waitress speaks no TLS itself.

    Python's `ssl` does the TLS (TLS 1.2 and up, the system's ciphers; a renewed certificate
    is picked up without a restart: web/tls.py); a plain-HTTP request on the port gets an
    error or a closed connection, never a page.
    """
    from cheroot import wsgi  # noqa: PLC0415

    server = wsgi.Server((host, port), app, numthreads=threads, server_name="openslb")
    server.ssl_adapter = adapter

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.start()
    finally:
        server.stop()


@console.command("create-admin")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def create_admin(settings: config.Settings, name: str, password_stdin: bool) -> None:
    """Create console user NAME with the admin role (the first one, or another)."""
    from slb.storage.store import Store  # noqa: PLC0415
    from web.auth import Accounts, AuthError, Role  # noqa: PLC0415

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    store = Store.connect(settings.redis)
    try:
        Accounts(store).create_user(name, password, Role.ADMIN)
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    from slb.storage.audit import AuditLog  # noqa: PLC0415

    AuditLog(store).record_document(
        who="cli:create-admin", action="create", kind="User", key=name,
        before=None, after={"name": name, "role": "admin"}, revision=store.revision(),
    )  # fmt: skip
    click.echo(f"admin {name} created")
