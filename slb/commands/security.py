"""`slb pki` (a small CA and what it issues), `slb redis-acl` (a Redis user per role) and
`slb secrets` (the key file that encrypts certificates' private keys in Redis).

They print where files went and what a certificate says, never a key or a password.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from slb import config, pki
from slb.storage import acl
from slb.storage.audit import AuditLog
from slb.storage.secrets import SecretError, SecretStore, add_key, load_keyring
from slb.storage.store import Store

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
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME",
    help="An LB node to make a user for (repeat; nodes made before are kept).",
)
@click.option("--rotate", is_flag=True, help="New passwords for every user.")
@click.pass_obj
def redis_acl(
    settings: config.Settings,
    directory: Path,
    prefix: str | None,
    nodes: tuple[str, ...],
    rotate: bool,
) -> None:
    """Write a Redis ACL file with one user per role (cmi, xds, console) and one per LB
    node (node-NAME), and a password file (0600) for each; existing passwords are kept
    unless --rotate. Reload Redis's users after (ACL LOAD, or a restart)."""
    try:
        db = acl.database(settings.redis.url)
        files = acl.write(directory, prefix or settings.redis.prefix, db, nodes=nodes,
                          rotate=rotate)  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"ACL file: {files.acl_file} (Redis: aclfile {files.acl_file.resolve()})")
    for user, path in files.password_files.items():
        state = "new" if user in files.created else "kept"
        click.echo(f"  user {user:12} password file {path} ({state})")
    click.echo("Each process: redis.username = USER, redis.password_file = USER's file.")


@click.group("secrets")
def secrets_group() -> None:
    """Certificates' private keys at rest: the key file that encrypts them in Redis."""


@secrets_group.command("new-key")
@click.option(
    "--file", "path", type=click.Path(dir_okay=False, path_type=Path),
    help="The key file (default: secrets.key_file).",
)  # fmt: skip
@click.option("--name", help="The new key's name (default: key-YYYYMMDD-HHMMSS, UTC).")
@click.pass_obj
def secrets_new_key(settings: config.Settings, path: Path | None, name: str | None) -> None:
    """Put a new random key first in the key file (made 0600 if missing). Once the console
    and `slb xds` restart with it, it encrypts what they write; every key still decrypts."""
    if path is None and not settings.secrets.key_file:
        raise click.UsageError("say which key file: --file PATH, or set secrets.key_file")
    path = path or Path(settings.secrets.key_file)
    keyring = add_key(path, name)
    click.echo(f"key {keyring.primary!r} is first in {path} (0600); it holds "
               f"{', '.join(keyring.names)}")  # fmt: skip
    click.echo("Next: restart `slb console` and `slb xds` with it, then `slb secrets reencrypt`.")


@secrets_group.command("reencrypt")
@click.pass_obj
def secrets_reencrypt(settings: config.Settings, /) -> None:
    """Encrypt every stored private key with the key file's first key (unencrypted ones
    too); audited. Run it once every process that reads keys has the key file."""
    keyring = load_keyring(settings.secrets)
    if keyring is None:
        raise config.ConfigError("secrets.key_file: not set: there is no key to encrypt with")
    store = Store.connect(settings.redis)
    keys = SecretStore(store, keyring)
    before, refs = keys.census(), sorted(keys.refs())
    done = {True: 0, False: 0, None: 0}
    failed: list[str] = []
    label = f"re-encrypting {len(refs)} private keys with key {keyring.primary!r}"
    with click.progressbar(refs, label=label) as progress:
        for ref in progress:
            try:
                done[keys.reencrypt(ref)] += 1
            except SecretError as exc:
                failed.append(str(exc))
    after = keys.census()
    AuditLog(store).record_document(
        who=f"cli:{getpass.getuser()}", action="reencrypt", kind="PrivateKeys",
        key=keyring.primary, before={"encrypted_with": before},
        after={"encrypted_with": after}, revision=store.revision(),
    )  # fmt: skip
    click.echo(f"re-encrypted {done[True]} of {len(refs)} with key {keyring.primary!r} "
               f"({done[False]} already were, {done[None]} deleted meanwhile, "
               f"{len(failed)} failed)")  # fmt: skip
    click.echo("now encrypted with: " + (", ".join(f"{k} {n}" for k, n in sorted(after.items()))
                                        or "nothing stored"))  # fmt: skip
    for error in failed:
        click.echo(f"error: {error}", err=True)
    if failed:
        sys.exit(1)
