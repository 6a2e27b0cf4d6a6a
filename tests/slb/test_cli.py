"""The `slb` command: its own commands and the tier commands plugged in by entry point."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from devbed.redis import RedisServer
from slb.cli import main
from slb.model import AddressPool
from slb.storage.audit import AuditLog
from slb.storage.store import Store


def test_version() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("openslb ")


def test_tier_commands_arrive_by_entry_point() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("cmi", "worker", "xds", "envoy-bootstrap", "l4-agent", "console", "dev", "lab",
                    "store"):  # fmt: skip
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


def test_an_operator_adopts_a_store_and_it_is_audited(
    store: Store, redis_server: RedisServer
) -> None:
    env = {"OPENSLB_REDIS_URL": redis_server.url, "OPENSLB_REDIS_PREFIX": store.prefix,
           "OPENSLB_CONFIG": ""}  # fmt: skip
    empty = CliRunner().invoke(main, ["store", "adopt", "--yes"], env=env)
    assert empty.exit_code == 1
    assert "the store is empty" in empty.output
    revision = store.put(AddressPool.model_validate({"name": "p", "cidrs": ["198.18.0.0/24"]}))
    identity = store.snapshot().store_id
    status = CliRunner().invoke(main, ["store", "status"], env=env)
    assert f"store:    {identity}" in status.output
    assert "synced:   never marked" in status.output
    adopted = CliRunner().invoke(main, ["store", "adopt", "--yes"], env=env)
    assert adopted.exit_code == 0, adopted.output
    synced = store.snapshot().synced
    assert synced is not None
    assert (synced.store_id, synced.revision, synced.adopted) == (identity, revision, True)
    again = CliRunner().invoke(main, ["store", "status"], env=env)
    assert f"synced:   at revision {revision}, " in again.output
    assert again.output.rstrip().endswith("adopted by an operator")
    (entry,) = AuditLog(store).entries(action="adopt")
    assert (entry.kind, entry.key, entry.revision) == ("Store", identity, revision)
    assert entry.who.startswith("cli:")
