"""Configuration: defaults, then a TOML file, then `OPENSLB_SECTION_KEY` environment variables.

Every setting is a dataclass field with its default and a one-line doc; the README's
configuration reference is generated from these (`slb config reference`) and a test
keeps the two equal. Every daemon binds to loopback unless configured otherwise.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

DEFAULT_FILE = Path("/etc/openslb/openslb.toml")
ENV_PREFIX = "OPENSLB_"


class ConfigError(ValueError):
    """A setting that cannot be used, named by its TOML key or environment variable."""


def setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis holding the desired state and the task queues"
    )
    prefix: str = setting("openslb", "Prefix of every key openslb writes")


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: str = setting("", "kubeconfig file; empty: in-cluster config, else ~/.kube/config")


@dataclass(frozen=True)
class XdsSettings:
    bind: str = setting(
        "127.0.0.1:18000", "Where `slb xds` serves ADS (gRPC) to Envoys; the bootstrap's default"
    )
    metrics_bind: str = setting(
        "127.0.0.1:18001", "Where `slb xds` serves Prometheus metrics; empty: not served"
    )


@dataclass(frozen=True)
class DevSettings:
    state_dir: str = setting(
        ".state/dev", "Where `slb dev up` keeps the local platform's state and logs"
    )


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    xds: XdsSettings = field(default_factory=XdsSettings)
    dev: DevSettings = field(default_factory=DevSettings)


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `path` (or $OPENSLB_CONFIG, or /etc/openslb/openslb.toml if present)."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        path = Path(environ[f"{ENV_PREFIX}CONFIG"])
    if path is None and DEFAULT_FILE.exists():
        path = DEFAULT_FILE
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    settings = Settings()
    sections = {}
    for section in fields(Settings):
        current = getattr(settings, section.name)
        table = data.pop(section.name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section.name}] must be a table")
        sections[section.name] = _apply(section.name, current, table, environ)
    if data:
        raise ConfigError(f"unknown section or key: {', '.join(sorted(data))}")
    return replace(settings, **sections)


def _apply(section: str, current: Any, table: dict[str, Any], environ: Mapping[str, str]) -> Any:
    hints = get_type_hints(type(current))
    changes = {}
    for f in fields(current):
        kind = hints[f.name]
        env_name = f"{ENV_PREFIX}{section}_{f.name}".upper()
        if f.name in table:
            value = table.pop(f.name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{section}.{f.name}: expected {kind.__name__}, got {value!r}")
            changes[f.name] = value
        if env_name in environ:
            changes[f.name] = _coerce(env_name, environ[env_name], kind)
    if table:
        raise ConfigError(f"unknown key in [{section}]: {', '.join(sorted(table))}")
    return replace(current, **changes)


def _coerce(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
    return raw


def reference() -> str:
    """The README's configuration table, one row per setting."""
    rows = [
        "| TOML key | Environment variable | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for section in fields(Settings):
        section_cls = section.default_factory
        assert callable(section_cls)
        assert is_dataclass(section_cls)
        for f in fields(section_cls):
            default = f.default if f.default is not MISSING else ""
            env = f"{ENV_PREFIX}{section.name}_{f.name}".upper()
            rows.append(
                f"| `{section.name}.{f.name}` | `{env}` | `{default!r}` | {f.metadata['doc']} |"
            )
    return "\n".join(rows)
