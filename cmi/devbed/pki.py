"""Throwaway certificates and keys for the tests and the demo, made on the spot.

`self_signed` for a server that only needs some certificate; `chain` for a leaf issued
through an intermediate by a root, as a real CA issues it (upload checks, TLS clients that
verify).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pair:
    chain_pem: str
    key_pem: str


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


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def key_pem() -> str:
    """A fresh private key, PEM (PKCS#8)."""
    return private_pem(new_key())


def certificate(
    subject: str,
    key: PrivateKey,
    issuer: str,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    days: float,
    sans: tuple[str, ...] = (),
    starts_in_days: float = 0,
) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer_key`, valid from a few minutes ago."""
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


def self_signed(*dns_names: str, days: int = 30) -> Pair:
    """A self-signed certificate for `dns_names` (the first is also the common name)."""
    key = new_key()
    cert = certificate(dns_names[0], key, dns_names[0], key, ca=False, days=days, sans=dns_names)
    return Pair(chain_pem=pem(cert), key_pem=private_pem(key))


def chain(*sans: str, days: float = 90, starts_in_days: float = 0) -> Chain:
    """A leaf for `sans` (default shop.example.test) valid `days` from now, via an intermediate."""
    sans = sans or ("shop.example.test",)
    root_key, mid_key, leaf_key = new_key(), new_key(), new_key()
    root = certificate("Test Root", root_key, "Test Root", root_key, ca=True, days=3650)
    mid = certificate("Test Intermediate", mid_key, "Test Root", root_key, ca=True, days=1825)
    leaf = certificate(
        sans[0], leaf_key, "Test Intermediate", mid_key,
        ca=False, days=days, sans=sans, starts_in_days=starts_in_days,
    )  # fmt: skip
    return Chain(pem(leaf), pem(mid), pem(root), private_pem(leaf_key))
