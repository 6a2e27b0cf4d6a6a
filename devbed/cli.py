"""`slb dev` and `slb lab`: registered through the `openslb.commands` entry point."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from slb import config


@click.group("dev")
def dev_group() -> None:
    """The local platform: every component on loopback, the lab VM as an LB node."""


def _platform(settings: config.Settings) -> Any:
    from devbed.platform import DevPlatform  # noqa: PLC0415 - only dev commands need it

    dev = settings.dev
    return DevPlatform(Path(dev.state_dir), vip_cidr=dev.vip_cidr, sample_cidr=dev.sample_cidr,
                       lab=dev.lab)  # fmt: skip


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


@dev_group.command("up")
@click.pass_obj
def dev_up(settings: config.Settings) -> None:
    """Start every component that is not running yet (idempotent)."""
    from devbed.process import StartError  # noqa: PLC0415 - only dev commands need it

    platform = _platform(settings)
    click.echo(f"openslb dev platform, state in {platform.state_dir}", err=True)
    try:
        platform.up(_progress)
    except StartError as exc:  # a component did not come up: its own words, no traceback
        raise click.ClickException(str(exc)) from None
    report = platform.show_traffic(_progress)
    _print_status(platform)
    click.echo("")
    for line in report:
        click.echo(line)
    click.echo("")
    click.echo(f"Console:          {platform.components()['console'].address} "
               f"(user admin, password in {platform.console_password_file})")  # fmt: skip
    click.echo(f"kubectl:          KUBECONFIG={platform.admin_kubeconfig} "
               "kubectl -n demo get svc,pods")  # fmt: skip
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


@click.group("lab")
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
    from devbed.labvm import LabVM  # noqa: PLC0415 - only lab commands need it

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
