"""`slb console`: registered through the `openslb.commands` entry point."""

import click

from cmi.cli import not_implemented


@click.command("console")
def console() -> None:
    """Serve the operator console and REST API."""
    not_implemented("console", 6)
