"""`slb store status|adopt`: the store's identity and cmi's marks on it (`slb.integrity`).

When the l4 agents and the xDS server hold their last good state because the store was
emptied, replaced or rewound, and cmi cannot rebuild it (the objects were operators', say,
restored from a backup by hand), an operator who has checked the store adopts it: the
consumers apply it as it is. The adoption is audited.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime

import click

from slb import config
from slb.storage.audit import AuditLog
from slb.storage.store import Store


@click.group("store")
def store_group() -> None:
    """The desired state's store: which one it is, and whether consumers trust it."""


@store_group.command("status")
@click.pass_obj
def store_status(settings: config.Settings, /) -> None:
    """The store's identity, revision, and cmi's marks."""
    snapshot = Store.connect(settings.redis).snapshot(kinds=())
    click.echo(f"store:    {snapshot.store_id or 'none (empty: nothing wrote it yet)'}")
    click.echo(f"revision: {snapshot.revision}")
    synced = snapshot.synced
    if synced is None:
        click.echo("synced:   never marked")
    else:
        at = datetime.fromtimestamp(synced.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        mine = (
            ""
            if synced.store_id == snapshot.store_id
            else f" (of another store, {synced.store_id})"
        )
        by = "adopted by an operator" if synced.adopted else "by cmi"
        click.echo(f"synced:   at revision {synced.revision}, {at}, {by}{mine}")
    if snapshot.syncing:
        click.echo(f"syncing:  cmi is rebuilding store {snapshot.syncing}")


@store_group.command("adopt")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_obj
def store_adopt(settings: config.Settings, /, yes: bool) -> None:
    """Mark the store as it is now complete: the l4 agents and the xDS server apply it, even
    if it holds less than they serve."""
    store = Store.connect(settings.redis)
    snapshot = store.snapshot(kinds=())
    if snapshot.store_id is None:
        click.echo("error: the store is empty: there is nothing to adopt", err=True)
        sys.exit(1)
    if not yes:
        click.confirm(
            f"Adopt store {snapshot.store_id} at revision {snapshot.revision}? Every LB node "
            "will serve what it holds, and stop serving anything it does not",
            abort=True,
        )
    synced = store.mark_synced(snapshot.store_id, snapshot.revision, adopted=True)
    if synced is None:
        click.echo("error: the store changed while adopting it; look again", err=True)
        sys.exit(1)
    AuditLog(store).record_document(
        who=f"cli:{getpass.getuser()}", action="adopt", kind="Store", key=synced.store_id,
        before=None, after=synced.__dict__, revision=synced.revision,
    )  # fmt: skip
    click.echo(f"adopted store {synced.store_id} at revision {synced.revision}")
