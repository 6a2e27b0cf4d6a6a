"""`slb console` as operators run it: waitress on loopback, a private secret key file;
HTTPS (cheroot) with a certificate from `slb pki`."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import sys
from pathlib import Path

import certifi
import pytest
import requests
from click.testing import CliRunner
from cryptography import x509

from devbed.process import Process, free_port, wait_until
from devbed.redis import RedisServer
from slb.cli import main
from slb.storage.store import Store


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
    console = Process("console", [sys.executable, "-m", "slb.cli", "console"], tmp_path, env=env)
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


ISSUE_CONSOLE = ["issue", "--name", "console", "--kind", "server",
                 "--san", "127.0.0.1", "--san", "console.openslb.test"]  # fmt: skip


def start_https_console(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> tuple[Process, str, Path]:
    """`slb console` over HTTPS with a certificate from `slb pki`: (process, URL, CA dir)."""
    ca_dir = tmp_path / "ca"
    for args in (["init", "--dir", str(ca_dir)], [*ISSUE_CONSOLE, "--dir", str(ca_dir)]):
        made = CliRunner().invoke(main, ["pki", *args], env={"OPENSLB_CONFIG": ""})
        assert made.exit_code == 0, made.output
    port = free_port()
    env = {
        "OPENSLB_CONFIG": "",
        "OPENSLB_REDIS_URL": redis_server.url,
        "OPENSLB_REDIS_PREFIX": store.prefix,
        "OPENSLB_CONSOLE_BIND": f"127.0.0.1:{port}",
        "OPENSLB_CONSOLE_SECRET_KEY_FILE": str(tmp_path / "console-secret-key"),
        "OPENSLB_CONSOLE_TLS_CERT": str(ca_dir / "console.crt"),
        "OPENSLB_CONSOLE_TLS_KEY": str(ca_dir / "console.key"),
    }
    console = Process("console", [sys.executable, "-m", "slb.cli", "console"], tmp_path, env=env)
    console.start()
    url = f"https://127.0.0.1:{port}"
    ca = str(ca_dir / "ca.crt")

    def up() -> bool:
        console.check_alive()
        try:
            return requests.get(f"{url}/login", timeout=2, verify=ca).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, 30, "slb console over HTTPS")
    except BaseException:
        console.stop()
        raise
    return console, url, ca_dir


def test_slb_console_serves_https_with_a_certificate_from_slb_pki(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    console, url, ca_dir = start_https_console(redis_server, store, tmp_path)
    port = url.rpartition(":")[2]
    ca = str(ca_dir / "ca.crt")
    try:
        response = requests.get(f"{url}/login", timeout=5, verify=ca)  # the CA verifies it
        assert "<form" in response.text
        assert response.headers["Server"] == "openslb"
        cookie = response.headers["Set-Cookie"]
        assert "openslb_session" in cookie
        assert "Secure" in cookie
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert requests.get(f"{url}/api/v1/listeners", timeout=5, verify=ca).status_code == 401
        with pytest.raises(requests.exceptions.SSLError):  # a client trusting another CA
            requests.get(f"{url}/login", timeout=5, verify=certifi.where())

        try:  # plain HTTP to the same port gets no page
            plain = requests.get(f"http://127.0.0.1:{port}/login", timeout=5)
        except requests.ConnectionError:
            pass
        else:
            assert plain.status_code == 400
            assert "<form" not in plain.text
        console.check_alive()  # and the server carries on
        assert requests.get(f"{url}/login", timeout=5, verify=ca).status_code == 200
    finally:
        console.stop()
    assert "https://127.0.0.1" in console.log_path.read_text()
    assert "PRIVATE KEY" not in console.log_path.read_text()


def test_slb_console_names_an_unusable_certificate(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["console"],
        env={"OPENSLB_CONFIG": "", "OPENSLB_CONSOLE_TLS_CERT": str(tmp_path / "missing.crt"),
             "OPENSLB_CONSOLE_TLS_KEY": str(tmp_path / "missing.key")},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "console.tls_cert: cannot read" in result.output
    half = CliRunner().invoke(
        main, ["console"],
        env={"OPENSLB_CONFIG": "", "OPENSLB_CONSOLE_TLS_KEY": str(tmp_path / "k")},
    )  # fmt: skip
    assert half.exit_code == 2
    assert "console.tls_cert: required with console.tls_key" in half.output


def served_serial(url: str, ca_dir: Path) -> int:
    """The serial number of the certificate the console presents to a new connection."""
    host, _, port = url.removeprefix("https://").rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_dir / "ca.crt"))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_a_renewed_certificate_is_served_without_a_restart(
    redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    console, url, ca_dir = start_https_console(redis_server, store, tmp_path)
    ca = str(ca_dir / "ca.crt")
    try:
        first = served_serial(url, ca_dir)
        renew = CliRunner().invoke(main, ["pki", *ISSUE_CONSOLE, "--dir", str(ca_dir), "--force"],
                                   env={"OPENSLB_CONFIG": ""})  # fmt: skip
        assert renew.exit_code == 0, renew.output
        second = served_serial(url, ca_dir)
        assert second != first
        assert requests.get(f"{url}/login", timeout=5, verify=ca).status_code == 200

        (ca_dir / "console.crt").write_text("-----BEGIN CERTIFICATE-----\n")  # half-written
        assert served_serial(url, ca_dir) == second
        assert requests.get(f"{url}/login", timeout=5, verify=ca).status_code == 200
        console.check_alive()
    finally:
        console.stop()
    log = console.log_path.read_text()
    assert "TLS files changed: serving the new certificate" in log
    assert "TLS files changed but do not load (console.tls_cert:" in log
