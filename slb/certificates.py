"""Checking a certificate chain and its private key before they enter the desired state.

Pure: the console, the API and `slb` refuse the same bad uploads with the same
field-named errors (`chain_pem`, `key_pem`), and an Envoy never gets a pair it would NACK
because the key does not match or the chain is out of order. The key's ref is derived
from its public half, so the same key always gets the same ref and a new key a new one,
and nothing about the private key is revealed by the ref.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from slb.model import Certificate, FieldError, ModelError

EXPIRY_WARNING_DAYS = 30
"""Below this many days left, a certificate is shown with a warning."""


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to see about a chain; never anything about the key."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint_sha256: str
    chain_length: int

    def days_left(self, now: datetime.datetime | None = None) -> int:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).days

    def expires_soon(self, now: datetime.datetime | None = None) -> bool:
        return self.days_left(now) < EXPIRY_WARNING_DAYS


@dataclass(frozen=True)
class CheckedPair:
    """A chain and key that belong together: the key normalised to PKCS#8 PEM, and its ref."""

    info: CertificateInfo
    key_pem: str
    key_ref: str


def _chain(chain_pem: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise _error("chain_pem", "not a PEM certificate chain") from None
    if not certs:
        raise _error("chain_pem", "no certificate found in the PEM text")
    return certs


def inspect(chain_pem: str) -> CertificateInfo:
    """The leaf certificate's subject, SANs, validity and fingerprint."""
    certs = _chain(chain_pem)
    leaf = certs[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [str(n) for n in names.get_values_for_type(x509.DNSName)]
            + [str(a) for a in names.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        sans=sans,
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        chain_length=len(certs),
    )


def check_pair(chain_pem: str, key_pem: str, now: datetime.datetime | None = None) -> CheckedPair:
    """Validate the chain, its order and dates, and that the key is the leaf's; else ModelError.

    Every problem found is reported, each naming its field; the key's text never appears
    in a message.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[FieldError] = []
    certs: list[x509.Certificate] = []
    try:
        certs = _chain(chain_pem)
    except ModelError as exc:
        problems += exc.errors
    if "PRIVATE KEY" in chain_pem:
        problems.append(FieldError(field="chain_pem", message="contains a private key"))
    key = _load_key(key_pem, problems)
    for i, cert in enumerate(certs):
        which = "the certificate" if i == 0 else f"chain certificate {i + 1}"
        if cert.not_valid_after_utc <= now:
            when = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
            problems.append(FieldError(field="chain_pem", message=f"{which} expired on {when}"))
        if cert.not_valid_before_utc > now:
            when = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
            problems.append(
                FieldError(field="chain_pem", message=f"{which} is not valid before {when}")
            )
    for i, (child, parent) in enumerate(itertools.pairwise(certs)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(
                FieldError(
                    field="chain_pem",
                    message=f"certificate {i + 2} did not issue certificate {i + 1}: "
                    "put the leaf first, then each issuer in turn",
                )
            )
    if key is not None and certs:
        mine = _public_der(key.public_key())
        if mine != _public_der(certs[0].public_key()):
            problems.append(
                FieldError(field="key_pem", message="does not match the certificate's public key")
            )
    if problems:
        raise ModelError(Certificate.kind, problems)
    assert key is not None
    normalised = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return CheckedPair(inspect(chain_pem), normalised, key_ref_for(key))


def key_ref_for(key: PrivateKeyTypes) -> str:
    """`key-` and the SHA-256 of the public key: stable for a key, new for a new key."""
    return "key-" + hashlib.sha256(_public_der(key.public_key())).hexdigest()[:40]


def _load_key(key_pem: str, problems: list[FieldError]) -> PrivateKeyTypes | None:
    try:
        return serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        message = "is encrypted: upload the key without a passphrase"
    except (ValueError, UnicodeError):
        message = "not an unencrypted PEM private key"
    problems.append(FieldError(field="key_pem", message=message))
    return None


def _public_der(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes")  # noqa: B009 - every key type has it
    der: bytes = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _error(field: str, message: str) -> ModelError:
    return ModelError(Certificate.kind, [FieldError(field=field, message=message)])
