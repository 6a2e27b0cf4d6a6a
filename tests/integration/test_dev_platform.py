"""`slb dev up|status|down`: the local platform starts, is idempotent, and stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cmi import config
from cmi.devbed.platform import DevPlatform
from cmi.store import Store


def slb(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmi.cli", *argv],
        env={**os.environ, "OPENSLB_DEV_STATE_DIR": str(state), "OPENSLB_CONFIG": ""},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    try:
        first = slb(state, "dev", "up")
        assert first.returncode == 0, first.stderr
        platform = DevPlatform(state)
        components = platform.components()
        assert set(components) == {"redis", "kube-apiserver", "envoy"}
        assert all(c.alive() for c in components.values())

        # The written config points slb at this platform's Redis.
        settings = config.load(platform.config_file, environ={})
        assert Store.from_url(settings.redis.url).revision() == 0
        assert Path(settings.kube.kubeconfig).exists()

        again = slb(state, "dev", "up")
        assert again.returncode == 0
        assert again.stderr.count("already running") == 3
        assert platform.components() == components

        status = slb(state, "dev", "status")
        assert status.returncode == 0
        assert status.stdout.count(" up ") == 3
    finally:
        down = slb(state, "dev", "down")
    assert down.returncode == 0
    assert not any(c.alive() for c in components.values())
    assert slb(state, "dev", "status").returncode == 1
