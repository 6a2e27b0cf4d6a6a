"""`slb console`: serve the console (waitress), and `slb console create-admin`.

Registered through the `openslb.commands` entry point, so cmi never imports the console.
"""

from __future__ import annotations

import sys

import click

from cmi import config


@click.group("console", invoke_without_command=True)
@click.option("--bind", help="HOST:PORT to serve on (default: console.bind, 127.0.0.1:8080).")
@click.pass_context
def console(ctx: click.Context, bind: str | None) -> None:
    """Serve the operator console and REST API (production WSGI server: waitress)."""
    if ctx.invoked_subcommand is not None:
        return
    import logging  # noqa: PLC0415

    import waitress  # noqa: PLC0415

    from web.app import create_app  # noqa: PLC0415

    settings: config.Settings = ctx.obj
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = (bind or settings.console.bind).rpartition(":")
    if not host or not port.isdigit():
        raise click.UsageError(f"console.bind: expected HOST:PORT, got {bind!r}")
    app = create_app(settings=settings)
    click.echo(
        f"openslb console on http://{host}:{port}/ (API: /api/v1, metrics: /metrics)", err=True
    )
    waitress.serve(
        app, host=host.strip("[]"), port=int(port), threads=settings.console.threads,
        ident="openslb", clear_untrusted_proxy_headers=True,
    )  # fmt: skip


@console.command("create-admin")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def create_admin(settings: config.Settings, name: str, password_stdin: bool) -> None:
    """Create console user NAME with the admin role (the first one, or another)."""
    from cmi.store import Store  # noqa: PLC0415
    from web.auth import Accounts, AuthError, Role  # noqa: PLC0415

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    store = Store.from_url(settings.redis.url, settings.redis.prefix)
    try:
        Accounts(store).create_user(name, password, Role.ADMIN)
    except AuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    from cmi.audit import AuditLog  # noqa: PLC0415

    AuditLog(store).record_document(
        who="cli:create-admin", action="create", kind="User", key=name,
        before=None, after={"name": name, "role": "admin"}, revision=store.revision(),
    )  # fmt: skip
    click.echo(f"admin {name} created")
