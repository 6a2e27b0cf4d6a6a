"""`slb cmi`: registered through the `openslb.commands` entry point."""

from __future__ import annotations

import click

from slb import config


@click.command("cmi")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_obj
def cmi_cmd(settings: config.Settings, log_level: str) -> None:
    """Run the controller: watch labelled Services, write desired state (leader-elected)."""
    import logging  # noqa: PLC0415

    from cmi import daemon  # noqa: PLC0415 - only this command needs the controller
    from slb.memory import CollectionWatch  # noqa: PLC0415

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    CollectionWatch(freeze_survivors=True).install()
    try:
        daemon.run(settings)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except daemon.LeaderThreadError as exc:
        raise click.ClickException(str(exc)) from None
