"""Configuration: TOML file, then environment; bad settings are named; the README is true."""

from __future__ import annotations

from pathlib import Path

import pytest

from slb import config
from slb.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_bind_to_loopback(tmp_path: Path) -> None:
    settings = config.load(environ={})
    assert settings.redis.url.startswith("redis://127.0.0.1:")
    assert settings.redis.prefix == "openslb"


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "openslb.toml"
    path.write_text('[redis]\nurl = "redis://127.0.0.1:7000/1"\nprefix = "file"\n')
    settings = config.load(path, environ={"OPENSLB_REDIS_PREFIX": "env"})
    assert settings.redis.url == "redis://127.0.0.1:7000/1"
    assert settings.redis.prefix == "env"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[dev]\nstate_dir = "{tmp_path}/state"\n')
    assert config.load(environ={"OPENSLB_CONFIG": str(path)}).dev.state_dir == f"{tmp_path}/state"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[redis]\nurl = 5\n", "redis.url"),
        ("[redis]\ncolour = 'x'\n", "colour"),
        ("[nosuch]\na = 1\n", "nosuch"),
        ("redis = 1\n", "[redis]"),
        ("[redis\n", "openslb.toml"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "openslb.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace(".", r"\.")):
        config.load(path, environ={})


def test_readme_carries_the_current_configuration_reference() -> None:
    assert config.reference() in (REPO / "README.md").read_text()


def test_host_port_reads_ipv4_ipv6_and_names_the_setting_when_it_cannot() -> None:
    assert config.host_port("127.0.0.1:9643", "cmi.health_bind") == ("127.0.0.1", 9643)
    assert config.host_port("[::1]:18000", "xds") == ("::1", 18000)
    for bad in ("9643", ":9643", "host:", "host:0", "host:65536", "host:http"):
        with pytest.raises(
            ConfigError, match=f"^l4.metrics_listen: expected HOST:PORT, got '{bad}'$"
        ):
            config.host_port(bad, "l4.metrics_listen")
