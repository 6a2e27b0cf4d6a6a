"""The console behind a real reverse proxy (HAProxy terminating TLS), served by waitress
as `slb console` serves it: forwarded headers count from the proxy alone (#14)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from devbed.pki import self_signed
from devbed.process import Process, connects, free_port, wait_until
from devbed.redis import RedisServer
from slb.config import ConsoleSettings
from slb.storage.store import Store
from tests.web.conftest import PASSWORD, make_app
from tests.web.serve import ServedApp
from web.auth import Accounts, Role
from web.cli import waitress_options

PROXY_SOURCE = "127.0.0.2"
"""The address HAProxy connects to the console from: the only one trusted."""


@pytest.fixture
def behind_proxy(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """(the proxy's HTTPS URL, the console's own URL, the proxy's certificate)."""
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is installed by deploy/testbed/install.sh"
    accounts = Accounts(store)
    for name, role in (("admin", Role.ADMIN), ("alice", Role.OPERATOR)):
        accounts.create_user(name, PASSWORD, role)
    app = make_app(redis_server, store, tmp_path, LOGIN_ATTEMPTS=3)
    settings = replace(ConsoleSettings(), trusted_proxy=PROXY_SOURCE, trusted_proxies=1)
    pair = self_signed("127.0.0.1")
    pem = tmp_path / "proxy.pem"
    pem.write_text(pair.chain_pem + pair.key_pem)
    (tmp_path / "proxy.crt").write_text(pair.chain_pem)
    port = free_port()
    with ServedApp(app, **waitress_options(settings)) as console:
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend console
  bind 127.0.0.1:{port} ssl crt {pem}
  http-request set-header X-Forwarded-Proto https
  option forwardfor
  default_backend console
backend console
  server console {console.url.removeprefix("http://")} source {PROXY_SOURCE}
""")
        proxy = Process("haproxy", [haproxy, "-db", "-f", str(config)], tmp_path).start()
        try:
            wait_until(lambda: proxy.check_alive() and connects("127.0.0.1", port), 20, "haproxy")
            yield f"https://127.0.0.1:{port}", console.url, str(tmp_path / "proxy.crt")
        finally:
            proxy.stop()


def attempt(base: str, ca: str, user: str, password: str, forged: str) -> requests.Response:
    """One login through a fresh session, sending a forged X-Forwarded-For."""
    session = requests.Session()  # (verify per request: REQUESTS_CA_BUNDLE beats session.verify)
    headers = {"X-Forwarded-For": forged}
    page = session.get(f"{base}/login", headers=headers, timeout=10, verify=ca)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:300]
    return session.post(
        f"{base}/login", headers=headers, allow_redirects=False, timeout=10, verify=ca,
        data={"username": user, "password": password, "csrf_token": token.group(1)},
    )  # fmt: skip


@pytest.mark.parametrize("via", ["proxy", "direct"])
def test_a_forged_x_forwarded_for_escapes_no_throttle(
    behind_proxy: tuple[str, str, str], via: str
) -> None:
    """An attacker rotates X-Forwarded-For to look like a new address at every guess: the
    throttle keys on the address the proxy saw (via the proxy) or on the client's own
    (direct: a client that is not the proxy cannot forward anything)."""
    proxy, direct, ca = behind_proxy
    base = proxy if via == "proxy" else direct
    codes = [
        attempt(base, ca, "admin", f"guess {n}", forged=f"198.18.9.{n}").status_code
        for n in range(1, 6)
    ]
    assert codes == [401, 401, 401, 429, 429]
    assert attempt(base, ca, "alice", PASSWORD, forged="198.18.9.77").status_code == 302


def test_hsts_is_sent_through_the_tls_proxy_only(behind_proxy: tuple[str, str, str]) -> None:
    proxy, direct, ca = behind_proxy
    through = requests.get(f"{proxy}/login", verify=ca, timeout=10)
    assert through.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = requests.get(f"{direct}/login", timeout=10)
    assert "Strict-Transport-Security" not in plain.headers
    forged = requests.get(f"{direct}/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert "Strict-Transport-Security" not in forged.headers
