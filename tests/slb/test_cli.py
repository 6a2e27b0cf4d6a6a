"""The `slb` command: its own commands and the tier commands plugged in by entry point."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from slb.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("openslb ")


def test_tier_commands_arrive_by_entry_point() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("cmi", "worker", "xds", "envoy-bootstrap", "l4-agent", "console", "dev", "lab"):
        assert f"  {command} " in result.output


def test_config_show_applies_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[redis]\nprefix = "lab"\n')
    result = CliRunner().invoke(
        main, ["--config", str(path), "config", "show"], env={"OPENSLB_DEV_STATE_DIR": "/x"}
    )
    assert result.exit_code == 0, result.output
    assert "prefix = 'lab'" in result.output
    assert "state_dir = '/x'" in result.output


def test_bad_configuration_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[redis]\nport = 1\n")
    result = CliRunner().invoke(main, ["--config", str(path), "version"])
    assert result.exit_code == 2
    assert "unknown key in [redis]: port" in result.output
