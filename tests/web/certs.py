"""Certificate chains for upload tests: a CA, an intermediate and a leaf, made on the spot."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Chain:
    leaf_pem: str
    intermediate_pem: str
    root_pem: str
    key_pem: str

    @property
    def chain_pem(self) -> str:
        """Leaf first, then its issuer: the order a TLS server sends."""
        return self.leaf_pem + self.intermediate_pem


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    days: float,
    sans: tuple[str, ...] = (),
    starts_in_days: float = 0,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    start = now + datetime.timedelta(days=starts_in_days) - datetime.timedelta(minutes=5)
    end = now + datetime.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, end - datetime.timedelta(hours=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def chain(*sans: str, days: float = 90, starts_in_days: float = 0) -> Chain:
    """A leaf for `sans` (default shop.example.test) valid `days` from now, via an intermediate."""
    sans = sans or ("shop.example.test",)
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Root", root_key, "Test Root", root_key, ca=True, days=3650)
    mid = _cert("Test Intermediate", mid_key, "Test Root", root_key, ca=True, days=1825)
    leaf = _cert(
        sans[0], leaf_key, "Test Intermediate", mid_key,
        ca=False, days=days, sans=sans, starts_in_days=starts_in_days,
    )  # fmt: skip
    return Chain(_pem(leaf), _pem(mid), _pem(root), _key_pem(leaf_key))


def other_key_pem() -> str:
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))
