"""The root of the `slb` command: settings, `version` and `config`.

Every other command plugs in through the `openslb.commands` entry point group (see
pyproject.toml), the way Flask's CLI takes plugins: the ground floor's own groups
(`slb.commands`), the watcher (`slb cmi`), each tier, and the test bed (`slb dev`,
`slb lab`). So the root imports nothing above the ground floor.
"""

from __future__ import annotations

from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any

import click

from slb import config


class PluginGroup(click.Group):
    """A group that also offers the commands other packages register by entry point."""

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group="openslb.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def invoke(self, ctx: click.Context) -> Any:
        """A setting found unusable while a command runs (a missing certificate or password
        file) is reported like one found while loading: by name, without a traceback."""
        try:
            return super().invoke(ctx)
        except config.ConfigError as exc:
            raise click.UsageError(str(exc)) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and (ep := self._plugins().get(cmd_name)) is not None:
            loaded: click.Command = ep.load()
            return loaded
        return command


@click.group(cls=PluginGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML configuration file (default: $OPENSLB_CONFIG or /etc/openslb/openslb.toml).",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """openslb: a self-hosted cloud load balancer for Kubernetes."""
    try:
        ctx.obj = config.load(config_path)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.command("version")
def version_cmd() -> None:
    """Print the openslb version."""
    click.echo(f"openslb {version('openslb')}")


@main.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@click.pass_obj
def config_show(settings: config.Settings) -> None:
    """Print the settings in force, after the file and environment are applied."""
    from dataclasses import asdict  # noqa: PLC0415

    for section, values in asdict(settings).items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {value!r}")
        click.echo()


@config_group.command("reference")
def config_reference() -> None:
    """Print the configuration reference as a Markdown table."""
    click.echo(config.reference())


if __name__ == "__main__":
    main()
