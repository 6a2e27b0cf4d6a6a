"""The `slb` command: its own commands, plugged-in tier commands, and honest placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cmi.cli import NOT_IMPLEMENTED_EXIT, main


def test_version() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("openslb ")


def test_tier_commands_arrive_by_entry_point() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("cmi", "worker", "xds", "envoy-bootstrap", "l4-agent", "console", "dev", "lab"):
        assert f"  {command} " in result.output


@pytest.mark.parametrize(
    ("argv", "issue"),
    [(["l4-agent"], 4)],
)
def test_unfinished_commands_fail_clearly(argv: list[str], issue: int) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == NOT_IMPLEMENTED_EXIT
    assert f"not implemented yet (tracked in issue #{issue})" in result.output


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
