"""`slb console` as operators run it: waitress on loopback, a private secret key file."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import requests

from cmi.devbed.process import Process, free_port, wait_until
from cmi.devbed.redis import RedisServer
from cmi.store import Store


def test_slb_console_serves_with_waitress(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    port = free_port()
    key_file = tmp_path / "state" / "console-secret-key"
    env = {
        "OPENSLB_CONFIG": "",
        "OPENSLB_REDIS_URL": redis_server.url,
        "OPENSLB_REDIS_PREFIX": store.prefix,
        "OPENSLB_CONSOLE_BIND": f"127.0.0.1:{port}",
        "OPENSLB_CONSOLE_SECRET_KEY_FILE": str(key_file),
    }
    console = Process("console", [sys.executable, "-m", "cmi.cli", "console"], tmp_path, env=env)
    console.start()
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            console.check_alive()
            return requests.get(f"{url}/login", timeout=2).status_code == 200

        wait_until(up, 30, "slb console")
        response = requests.get(f"{url}/login", timeout=5)
        assert response.headers["Server"] == "openslb"
        assert "openslb_session" in response.headers["Set-Cookie"]
        assert requests.get(f"{url}/api/v1/listeners", timeout=5).status_code == 401
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    finally:
        console.stop()
