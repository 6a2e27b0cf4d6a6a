"""The `slb` command.

cmi's own commands are defined here; each tier adds its commands through the
`openslb.commands` entry point group (see pyproject.toml), the way Flask's CLI takes
plugins, so cmi never imports a tier.
"""

from __future__ import annotations

import shlex
import sys
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any

import click

from cmi import config
from cmi.cli_objects import COMMANDS
from cmi.cli_security import COMMANDS as SECURITY_COMMANDS


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


@main.command("cmi")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_obj
def cmi_cmd(settings: config.Settings, log_level: str) -> None:
    """Run the controller: watch labelled Services, write desired state (leader-elected)."""
    import logging  # noqa: PLC0415

    from cmi import daemon  # noqa: PLC0415 - only this command needs the controller

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        daemon.run(settings)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except daemon.LeaderThreadError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("worker")
@click.option("--node", help="Program this LB node: consume l4.NODE with its l4 agent inside.")
@click.option("--l7", "l7", is_flag=True, help="Consume the L7 tier's queue (beside `slb xds`).")
@click.option("--control", is_flag=True, help="Consume openslb's own queue (drift re-assertion).")
@click.option("--beat", is_flag=True, help="Also run Celery beat, the re-assertion's clock.")
@click.option("--metrics-listen", default="", help="Serve Prometheus metrics on HOST:PORT.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_obj
def worker_cmd(
    settings: config.Settings,
    /,
    *,
    node: str | None,
    l7: bool,
    control: bool,
    beat: bool,
    metrics_listen: str,
    log_level: str,
) -> None:
    """Run a Celery worker that brings a node or tier to the desired revision.

    One task at a time (the solo pool): an LB node applies one revision after another,
    never two at once; the agent's lock guards against a second worker for the same node.
    """
    from cmi.celeryapp import CONTROL_QUEUE, L7_QUEUE, l4_queue, make_app  # noqa: PLC0415

    queues = [q for q, wanted in ((l4_queue(node or ""), node), (L7_QUEUE, l7),
                                  (CONTROL_QUEUE, control or beat)) if wanted]  # fmt: skip
    if not queues:
        raise click.UsageError("say what to work for: --node NAME, --l7 or --control")
    app = make_app(settings)
    app.conf.update(openslb_node=node)
    if metrics_listen:
        from prometheus_client import REGISTRY, start_http_server  # noqa: PLC0415

        from cmi.store import Store  # noqa: PLC0415
        from cmi.taskmetrics import QueueDepth  # noqa: PLC0415

        if control or beat:
            REGISTRY.register(QueueDepth(Store.connect(settings.redis)))
        host, _, port = metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    role = node or ("l7" if l7 else "control")
    argv = ["worker", "--queues", ",".join(queues), "--pool", "solo", "--concurrency", "1",
            "--hostname", f"{role}@%h", "--loglevel", log_level, "--without-mingle",
            "--without-gossip"]  # fmt: skip
    if beat:
        schedule = Path(settings.dev.state_dir) / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(schedule)]
    app.worker_main(argv)


@main.group("dev")
def dev_group() -> None:
    """The local platform: every component on loopback, the lab VM as an LB node."""


def _platform(settings: config.Settings) -> Any:
    from cmi.devbed.platform import DevPlatform  # noqa: PLC0415 - only dev commands need it

    dev = settings.dev
    return DevPlatform(Path(dev.state_dir), vip_cidr=dev.vip_cidr, sample_cidr=dev.sample_cidr,
                       lab=dev.lab)  # fmt: skip


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


@dev_group.command("up")
@click.pass_obj
def dev_up(settings: config.Settings) -> None:
    """Start every component that is not running yet (idempotent)."""
    platform = _platform(settings)
    click.echo(f"openslb dev platform, state in {platform.state_dir}", err=True)
    platform.up(_progress)
    report = platform.show_traffic(_progress)
    _print_status(platform)
    click.echo("")
    for line in report:
        click.echo(line)
    click.echo("")
    click.echo(f"Console:          {platform.components()['console'].address} "
               f"(user admin, password in {platform.console_password_file})")  # fmt: skip
    click.echo(f"kubectl:          KUBECONFIG={platform.admin_kubeconfig} kubectl -n demo get svc")
    click.echo(f"Point slb at it:  export OPENSLB_CONFIG={platform.config_file}")
    click.echo("Stop it with:     slb dev down   (or make demo-down)")


@dev_group.command("down")
@click.pass_obj
def dev_down(settings: config.Settings) -> None:
    """Stop every component and forget its state."""
    _platform(settings).down(_progress)


@dev_group.command("status")
@click.pass_obj
def dev_status(settings: config.Settings) -> None:
    """Show what runs, where, and its log; exit 1 if something is down."""
    if not _print_status(_platform(settings)):
        sys.exit(1)


def _print_status(platform: Any) -> bool:
    components = platform.components()
    if not components:
        click.echo("nothing is running (slb dev up starts it)")
        return False
    healthy = True
    for name, component in components.items():
        alive = component.alive()
        healthy &= alive
        state = click.style("up", fg="green") if alive else click.style("DOWN", fg="red")
        click.echo(f"{name:16} {state:13} {component.address:32} log: {component.log}")
        if component.detail:
            click.echo(f"{'':16} {component.detail}")
    return healthy


@main.group("lab")
def lab_group() -> None:
    """The throwaway lab VM with a real IPVS kernel."""


@lab_group.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--memory", default=1024, show_default=True, help="Guest memory in MiB.")
@click.option(
    "--timeout", default=900.0, show_default=True, help="Seconds before the VM is killed."
)
@click.option("--no-network", is_flag=True, help="No NIC (by default the guest reaches the host).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_run(memory: int, timeout: float, no_network: bool, command: tuple[str, ...]) -> None:
    """Boot the lab VM, run COMMAND as root inside, power off; exit with its status.

    The guest sees the host's files read-only with a writable layer on top, starts in the
    current directory, and reaches the host's loopback at 198.18.255.2.
    """
    from cmi.devbed.labvm import LabVM  # noqa: PLC0415 - only lab commands need it

    click.echo("lab VM: booting", err=True)
    result = LabVM(memory_mb=memory, network=not no_network).run(
        shlex.join(command), timeout=timeout, echo=True
    )
    click.echo(
        f"lab VM: command exited {result.returncode} "
        f"(boot {result.boot_s:.1f} s, total {result.total_s:.1f} s)",
        err=True,
    )
    sys.exit(result.returncode)


for _command in (*COMMANDS, *SECURITY_COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":
    main()
