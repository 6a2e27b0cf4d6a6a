"""`slb pki`: a CA and the certificates it issues, keys 0600 and never printed; the TLS
settings' files are checked and a bad one is named."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from slb import pki
from slb.cli import main
from slb.config import ConfigError


def slb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"OPENSLB_CONFIG": ""})


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_and_issue_write_a_ca_and_its_certificates(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    made = slb("pki", "init", "--dir", str(ca_dir))
    assert made.exit_code == 0, made.output
    server = slb("pki", "issue", "--dir", str(ca_dir), "--name", "xds", "--kind", "server",
                 "--san", "xds.openslb.test", "--san", "198.18.0.5")  # fmt: skip
    client = slb("pki", "issue", "--dir", str(ca_dir), "--name", "lb1", "--kind", "client")
    assert server.exit_code == 0, server.output
    assert client.exit_code == 0, client.output

    for name in ("ca", "xds", "lb1"):
        assert mode(ca_dir / f"{name}.key") == 0o600
        key_text = (ca_dir / f"{name}.key").read_text()
        assert "PRIVATE KEY" in key_text
        for output in (made.output, server.output, client.output):
            assert "PRIVATE KEY" not in output
            assert key_text.splitlines()[1] not in output
    assert mode(ca_dir) == 0o700

    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    leaf = x509.load_pem_x509_certificate((ca_dir / "xds.crt").read_bytes())
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["xds.openslb.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.5")]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lb1 = x509.load_pem_x509_certificate((ca_dir / "lb1.crt").read_bytes())
    lb1.verify_directly_issued_by(ca)
    assert list(lb1.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert "lb1" in client.output  # the SAN defaults to the name


def test_nothing_is_overwritten_and_bad_requests_are_named(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert slb("pki", "init", "--dir", str(ca_dir)).exit_code == 0
    key_before = (ca_dir / "ca.key").read_bytes()
    again = slb("pki", "init", "--dir", str(ca_dir))
    assert again.exit_code == 1
    assert "a CA is there already" in again.output
    assert (ca_dir / "ca.key").read_bytes() == key_before

    args = ["pki", "issue", "--dir", str(ca_dir), "--name", "n1", "--kind", "client"]
    assert slb(*args).exit_code == 0
    first = (ca_dir / "n1.key").read_bytes()
    refused = slb(*args)
    assert refused.exit_code == 1
    assert "--force" in refused.output
    assert slb(*args, "--force").exit_code == 0
    assert (ca_dir / "n1.key").read_bytes() != first

    bad_name = slb("pki", "issue", "--dir", str(ca_dir), "--name", "../x", "--kind", "server")
    assert bad_name.exit_code == 1
    assert "name:" in bad_name.output
    no_ca = slb("pki", "issue", "--dir", str(tmp_path / "none"), "--name", "a", "--kind", "server")
    assert no_ca.exit_code == 1
    assert "slb pki init" in no_ca.output
    bad_kind = slb("pki", "issue", "--dir", str(ca_dir), "--name", "a", "--kind", "peer")
    assert bad_kind.exit_code == 2


def test_tls_files_are_checked_and_named(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    pki.init_ca(ca_dir)
    a = pki.issue(ca_dir, "a", "server")
    b = pki.issue(ca_dir, "b", "server")
    chain, key = pki.load_identity("x.tls_cert", str(a.cert_path), "x.tls_key", str(a.key_path))
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in key

    with pytest.raises(ConfigError, match=r"^x\.tls_cert: cannot read .*nope"):
        pki.load_identity("x.tls_cert", str(tmp_path / "nope"), "x.tls_key", str(a.key_path))
    with pytest.raises(ConfigError, match=r"^x\.tls_cert: .* holds no PEM certificate"):
        pki.load_identity("x.tls_cert", str(a.key_path), "x.tls_key", str(a.key_path))
    with pytest.raises(ConfigError, match=r"^x\.tls_key: .* holds no unencrypted PEM private key"):
        pki.load_identity("x.tls_cert", str(a.cert_path), "x.tls_key", str(a.cert_path))
    with pytest.raises(ConfigError, match=r"^x\.tls_key: .* is not the key of x\.tls_cert") as e:
        pki.load_identity("x.tls_cert", str(a.cert_path), "x.tls_key", str(b.key_path))
    assert "PRIVATE" not in str(e.value)

    assert not pki.tls_settings({"x.tls_cert": "", "x.tls_key": ""})
    assert pki.tls_settings({"x.tls_cert": "c", "x.tls_key": "k"})
    with pytest.raises(ConfigError, match=r"^x\.tls_key: required with x\.tls_cert"):
        pki.tls_settings({"x.tls_cert": "c", "x.tls_key": ""})
