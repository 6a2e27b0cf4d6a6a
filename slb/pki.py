"""openslb's one certificate generator, a small CA for the links between nodes, and the
loading of the PEM files that the TLS settings name.

Once LB nodes sit on a network, the links between openslb's parts must be authenticated:
Envoy <-> `slb xds` (mutual TLS) and browsers -> `slb console` (HTTPS). An operator may
bring certificates from any CA (every setting takes PEM files); `slb pki` makes a small
one for those who have none:

  DIR/ca.crt, DIR/ca.key        the CA (key 0600), `slb pki init --dir DIR`
  DIR/NAME.crt, DIR/NAME.key    what it issues (key 0600), `slb pki issue --dir DIR --name NAME`

Keys are EC P-256; they are written only to files made 0600 before a byte goes in, and
never printed or logged. The test bed's throwaway certificates (`devbed.pki`) are made
by the same `certificate` function.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slb.config import ConfigError

T = TypeVar("T")

PrivateKey = ec.EllipticCurvePrivateKey
Kind = Literal["server", "client"]
KINDS: tuple[Kind, ...] = ("server", "client")
CA_NAME = "ca"
CA_DAYS = 3650
LEAF_DAYS = 825
"""The longest validity browsers accept for a server certificate (CA/B Forum, 2018)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


class PKIError(ValueError):
    """A CA directory or request that cannot be used; the message names what is wrong."""


# -- making keys and certificates ---------------------------------------------------------


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def general_name(san: str) -> x509.GeneralName:
    """An IP address SAN for an address, else a DNS name SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def certificate(
    subject: str,
    key: PrivateKey,
    issuer: tuple[x509.Certificate, PrivateKey] | None,
    *,
    ca: bool,
    days: float,
    sans: Sequence[str] = (),
    starts_in_days: float = 0,
    usage: Kind | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """A certificate for `key` signed by `issuer` (its certificate and key; None: self-signed),
    valid from a few minutes ago (clocks differ) for `days` (negative: already expired).

    `usage` adds the key usages a TLS peer checks (server or client authentication); a CA
    gets the ones that let it sign certificates.
    """
    now = datetime.datetime.now(datetime.UTC)
    start = now + datetime.timedelta(days=starts_in_days) - datetime.timedelta(minutes=5)
    end = now + datetime.timedelta(days=days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, end - datetime.timedelta(hours=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general_name(n) for n in sans]), critical=False
        )
    if ca or usage is not None:
        builder = builder.add_extension(_key_usage(ca), critical=True)
    if usage is not None:
        purpose = {"server": ExtendedKeyUsageOID.SERVER_AUTH,
                   "client": ExtendedKeyUsageOID.CLIENT_AUTH}[usage]  # fmt: skip
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


# -- the CA directory ---------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """Where a certificate and its key were written, and what an operator checks about it."""

    cert_path: Path
    key_path: Path
    subject: str
    sans: tuple[str, ...]
    not_after: datetime.datetime


def init_ca(directory: Path, name: str = "openslb CA", days: float = CA_DAYS) -> Issued:
    """Make a CA in `directory` (created 0700); refuse if one is there already."""
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if key_path.exists() or cert_path.exists():
        raise PKIError(f"{directory}: a CA is there already ({CA_NAME}.crt, {CA_NAME}.key)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = new_key()
    cert = certificate(name, key, None, ca=True, days=days, path_length=0)
    write_secret(key_path, private_pem(key))
    write_public(cert_path, pem(cert))
    return Issued(cert_path, key_path, name, (), cert.not_valid_after_utc)


def load_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
    if not key_path.exists() or not cert_path.exists():
        raise PKIError(f"{directory}: no CA there (make one with `slb pki init --dir {directory}`)")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: not an EC key made by `slb pki init`")
    return cert, key


def issue(
    directory: Path,
    name: str,
    kind: Kind,
    sans: Iterable[str] = (),
    *,
    days: float = LEAF_DAYS,
    force: bool = False,
) -> Issued:
    """Issue DIR/NAME.crt and DIR/NAME.key from the CA in `directory`.

    The subject is NAME; the SANs default to NAME (a server is checked against them).
    An existing pair is replaced only with `force`, so a typo cannot overwrite one in use.
    """
    if not _NAME.match(name) or name == CA_NAME:
        raise PKIError(f"name: {name!r} must be letters, digits, '.', '_' or '-' (not {CA_NAME!r})")
    if kind not in KINDS:
        raise PKIError(f"kind: expected server or client, got {kind!r}")
    sans = tuple(sans) or (name,)
    for san in sans:
        if not san or any(c.isspace() for c in san) or "/" in san:
            raise PKIError(f"san: {san!r} is neither a DNS name nor an IP address")
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise PKIError(f"{cert_path}: exists already (--force replaces it)")
    ca_cert, ca_key = load_ca(directory)
    key = new_key()
    cert = certificate(name, key, (ca_cert, ca_key), ca=False, days=days, sans=sans, usage=kind)
    write_secret(key_path, private_pem(key))
    write_public(cert_path, pem(cert))
    return Issued(cert_path, key_path, name, sans, cert.not_valid_after_utc)


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` through a file that is 0600 from its creation on, then
    rename it into place, so no reader ever sees a partial or wider-open secret."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_public(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


# -- the files TLS settings name ----------------------------------------------------------


def _read(field: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None


def load_certificates(field: str, path: str) -> bytes:
    """The PEM certificates in the file `field` names, checked to be some."""
    data = _read(field, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{field}: {path} holds no PEM certificate")
    return data


def load_key(field: str, path: str) -> tuple[bytes, PrivateKeyTypes]:
    """The PEM private key in the file `field` names (never quoted in an error)."""
    data = _read(field, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{field}: {path} holds no unencrypted PEM private key") from None
    return data, key


def load_identity(
    cert_field: str, cert_path: str, key_field: str, key_path: str
) -> tuple[bytes, bytes]:
    """A certificate chain and its key, checked to belong together: (chain PEM, key PEM)."""
    chain = load_certificates(cert_field, cert_path)
    key_pem, key = load_key(key_field, key_path)
    leaf = x509.load_pem_x509_certificates(chain)[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ConfigError(f"{key_field}: {key_path} is not the key of {cert_field} ({cert_path})")
    return chain, key_pem


class RotatingFiles(Generic[T]):
    """What a server makes of its TLS files (an `ssl.SSLContext`, gRPC's certificate
    configuration), made again when one of the files changes, so certificates rotate
    without a restart. `changed()` costs a stat per file: servers call it on each new
    connection. Files that do not load (half-written, a key of another certificate) leave
    the last good value serving, with a warning; they are tried again when they change."""

    def __init__(self, paths: Sequence[str], load: Callable[[], T], log: logging.Logger):
        self.paths, self._load, self._log = tuple(paths), load, log
        self._lock = threading.Lock()
        self._stamp = self._stamp_now()
        self.current = load()  # at start, a file that does not load is an error

    def changed(self) -> T | None:
        """The value made again if a file changed since the last call; else None."""
        stamp = self._stamp_now()
        with self._lock:
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                self.current = self._load()
            except (ConfigError, OSError) as exc:  # ssl.SSLError is an OSError
                self._log.warning("TLS files changed but do not load (%s); serving the "
                                  "previous certificate", exc)  # fmt: skip
                return None
            self._log.info("TLS files changed: serving the new certificate")
            return self.current

    def _stamp_now(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when a file is rewritten or replaced: inode, size, mtime."""
        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)


def tls_settings(values: dict[str, str]) -> bool:
    """Whether TLS is configured by a group of settings that go together (by name -> value):
    all empty: no; all set: yes; some: a ConfigError naming the first missing one."""
    missing = [name for name, value in values.items() if not value]
    if len(missing) == len(values):
        return False
    if missing:
        given = next(name for name, value in values.items() if value)
        raise ConfigError(f"{missing[0]}: required with {given}")
    return True
