"""`slb pki` (a small CA and what it issues) and `slb redis-acl` (a Redis user per role).

They print where files went and what a certificate says, never a key or a password.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from slb import config, pki
from slb.storage import acl

DIR = click.Path(file_okay=False, path_type=Path)


@click.group("pki")
def pki_group() -> None:
    """A small CA for the links between openslb's nodes (any other CA's PEM files do too)."""


@pki_group.command("init")
@click.option("--dir", "directory", type=DIR, required=True, help="The CA's directory.")
@click.option("--name", default="openslb CA", show_default=True, help="The CA's common name.")
@click.option("--days", default=pki.CA_DAYS, show_default=True, help="Validity.")
def pki_init(directory: Path, name: str, days: int) -> None:
    """Make a CA: DIR/ca.crt and DIR/ca.key (0600)."""
    try:
        made = pki.init_ca(directory, name, days)
    except pki.PKIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"CA {made.subject!r}: {made.cert_path} (key {made.key_path}, 0600), "
               f"valid until {made.not_after:%Y-%m-%d}")  # fmt: skip


@pki_group.command("issue")
@click.option("--dir", "directory", type=DIR, required=True, help="The CA's directory.")
@click.option("--name", required=True, help="Subject; the files are DIR/NAME.crt and NAME.key.")
@click.option("--kind", type=click.Choice(pki.KINDS), required=True, help="TLS server or client.")
@click.option(
    "--san", "sans", multiple=True, help="DNS name or IP address (repeatable; default: NAME)."
)
@click.option("--days", default=pki.LEAF_DAYS, show_default=True, help="Validity.")
@click.option("--force", is_flag=True, help="Replace an existing NAME.crt and NAME.key.")
def pki_issue(
    *, directory: Path, name: str, kind: pki.Kind, sans: tuple[str, ...], days: int, force: bool
) -> None:
    """Issue a server or client certificate: DIR/NAME.crt and DIR/NAME.key (0600)."""
    try:
        made = pki.issue(directory, name, kind, sans, days=days, force=force)
    except pki.PKIError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{kind} certificate {made.subject!r} for {', '.join(made.sans)}: "
               f"{made.cert_path} (key {made.key_path}, 0600), "
               f"valid until {made.not_after:%Y-%m-%d}")  # fmt: skip


@click.command("redis-acl")
@click.option("--dir", "directory", type=DIR, required=True, help="Where the files go.")
@click.option("--prefix", help="Key prefix the users are confined to (default: redis.prefix).")
@click.option("--rotate", is_flag=True, help="New passwords for every role.")
@click.pass_obj
def redis_acl(settings: config.Settings, directory: Path, prefix: str | None, rotate: bool) -> None:
    """Write a Redis ACL file with one user per role (cmi, worker, xds, console) and a
    password file (0600) for each; existing passwords are kept unless --rotate."""
    try:
        db = acl.database(settings.redis.url)
        files = acl.write(directory, prefix or settings.redis.prefix, db, rotate=rotate)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"ACL file: {files.acl_file} (Redis: aclfile {files.acl_file.resolve()})")
    for role, path in files.password_files.items():
        state = "new" if role in files.created else "kept"
        click.echo(f"  user {role:8} password file {path} ({state})")
    click.echo("Each process: redis.username = ROLE, redis.password_file = ROLE's file.")
