"""Private keys of TLS certificates, kept apart from the desired state, encrypted at rest.

A `Certificate` names its key by `key_ref`; the key itself lives here, so snapshots, the
change stream, the console and logs never carry key material. Refs are immutable: a new
key gets a new ref, so rotating a key is a Certificate change and thus a new revision
that every tier sees. Error messages name the ref (and the name of the key file's key),
never key material.

Layout: `P:secret:REF` is a string holding the PEM private key, either

- encrypted: `openslb:enc:aesgcm:v1:NAME:` then base64 of a 12-byte nonce and the
  AES-256-GCM ciphertext and tag, sealed with the key NAME of the key file
  (`secrets.key_file`) and the ref as associated data, so a value copied under another
  ref does not decrypt; or
- plaintext (no key file when it was written, or written before this existed): read as it
  is, so an upgrade needs no migration; `slb secrets reencrypt` encrypts it.

The key file (0600) holds one named 32-byte key a line, `NAME BASE64`; `#` starts a
comment. Like Kubernetes' EncryptionConfiguration, the first key encrypts what is written
and every key decrypts, so keys rotate without downtime: `slb secrets new-key` puts a new
key first, the processes that read keys (`slb console`, `slb xds`) restart to load it,
`slb secrets reencrypt` rewrites every value with it, and then the old key can go.
Without a key file, keys are written unencrypted, as before, and an encrypted value
cannot be read.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from slb.config import ConfigError, SecretsSettings
from slb.pki import write_secret
from slb.storage.store import Store

SETTING = "secrets.key_file"
KEY_BYTES = 32
NONCE_BYTES = 12
UNENCRYPTED = "(unencrypted)"
UNREADABLE = "(unreadable)"
"""How `SecretStore.census` counts values no key encrypted, and values of an unknown form."""
_ENCRYPTED = b"openslb:enc:"
_SCHEME = b"openslb:enc:aesgcm:v1:"
_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
"""Replace a value only if it is still the one read: a write meanwhile is not lost."""
_HEADER = (
    f"# openslb key file ({SETTING}): one key a line, NAME BASE64 (32 random bytes).\n"
    "# The first key encrypts what is written; every key decrypts. Keep it 0600.\n"
)


class SecretError(ValueError):
    """A key that cannot be stored or found; the message names the ref (and a key of the
    key file by its name), never key material."""


def check_ref(ref: str) -> str:
    if not _REF.match(ref):
        raise SecretError(
            f"key_ref {ref!r}: 1-253 lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )
    return ref


def check_key(ref: str, pem: str) -> str:
    """Return `pem` if it is one unencrypted PEM private key, else raise naming `ref`."""
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415 - keys only
        load_pem_private_key,
    )

    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise SecretError(f"key_ref {ref!r}: not an unencrypted PEM private key") from None
    return pem


# -- the keyring and its file -------------------------------------------------------------


@dataclass(frozen=True)
class Keyring:
    """Named AES-256 keys: the first encrypts what is written, every one decrypts."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring holds at least one key")

    def __repr__(self) -> str:  # names only: a keyring in a log line shows no key
        return f"Keyring({', '.join(self.names)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)

    @property
    def primary(self) -> str:
        """The name of the key that encrypts."""
        return self.keys[0][0]

    def encrypt(self, ref: str, pem: str) -> bytes:
        name, key = self.keys[0]
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, pem.encode(), ref.encode())
        return _SCHEME + name.encode() + b":" + base64.b64encode(nonce + sealed)

    def decrypt(self, ref: str, name: str, sealed: bytes) -> str:
        key = dict(self.keys).get(name)
        if key is None:
            raise SecretError(
                f"key_ref {ref!r}: encrypted with key {name!r}, which {SETTING} does not hold"
            )
        try:
            raw = base64.b64decode(sealed, validate=True)
            pem = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ref.encode())
        except (ValueError, InvalidTag):  # binascii.Error is a ValueError
            raise SecretError(
                f"key_ref {ref!r}: does not decrypt with key {name!r} "
                "(altered, or copied from another ref)"
            ) from None
        return pem.decode()


def load_keyring(settings: SecretsSettings) -> Keyring | None:
    """The keyring of `secrets.key_file`, None if it is not set (keys stay unencrypted).
    Every process that reads or writes private keys gets its keyring here."""
    return read_key_file(Path(settings.key_file)) if settings.key_file else None


def read_key_file(path: Path) -> Keyring:
    """The keys in `path`, refused if its mode lets anyone but its owner in (`too_open`);
    errors name the setting and the line, never a key."""
    _check_private(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"{SETTING}: cannot read {path}: {reason}") from None
    return _parse_key_file(text, path)


def add_key(path: Path, name: str | None = None) -> Keyring:
    """Put a new random key first in the key file `path`, made (0600) if missing; return
    the keyring it now holds. The file is replaced whole, never seen half-written."""
    name = name or time.strftime("key-%Y%m%d-%H%M%S", time.gmtime())
    if not _KEY_NAME.match(name):
        raise ConfigError(f"{SETTING}: key name {name!r}: 1-63 letters, digits, '.', '_' or '-'")
    lines = _HEADER.splitlines(keepends=True)
    if path.exists():
        _check_private(path)
        text = path.read_text()
        if any(map(_is_key_line, text.splitlines())) and name in _parse_key_file(text, path).names:
            raise ConfigError(f"{SETTING}: {path} holds a key named {name!r} already")
        lines = (text if text.endswith("\n") or not text else text + "\n").splitlines(True)
    first = next((i for i, line in enumerate(lines) if _is_key_line(line)), len(lines))
    secret = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    lines.insert(first, f"{name} {secret}\n")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(path, "".join(lines))
    return read_key_file(path)


def too_open(mode: int, owner: int) -> bool:
    """Whether a key file's mode lets anyone but its owner in. As PostgreSQL allows for its
    key file, a file root owns may let its group read it (a Kubernetes Secret volume with
    an fsGroup does); no file may let others in."""
    allowed = 0o040 if owner == 0 else 0
    return bool(stat.S_IMODE(mode) & 0o077 & ~allowed)


def _check_private(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot read {path}: {exc.strerror}") from None
    if too_open(st.st_mode, st.st_uid):
        raise ConfigError(
            f"{SETTING}: {path} lets others than its owner in "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
        )


def _is_key_line(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _parse_key_file(text: str, path: Path) -> Keyring:
    keys: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not _is_key_line(line):
            continue
        where = f"{SETTING}: {path} line {number}"
        parts = line.split()
        if len(parts) != 2:  # the line is not quoted: it may hold a key
            raise ConfigError(f"{where}: expected NAME BASE64")
        name, encoded = parts
        if not _KEY_NAME.match(name):
            raise ConfigError(f"{where}: key name: 1-63 letters, digits, '.', '_' or '-'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{where}: key {name!r} is not {KEY_BYTES} bytes in base64")
        if name in dict(keys):
            raise ConfigError(f"{where}: a second key named {name!r}")
        keys.append((name, key))
    if not keys:
        raise ConfigError(f"{SETTING}: {path} holds no key (`slb secrets new-key` adds one)")
    return Keyring(tuple(keys))


# -- the store ----------------------------------------------------------------------------


def _encrypted(ref: str, value: bytes) -> tuple[str, bytes] | None:
    """The key name and the sealed part of an encrypted value; None if it is plaintext."""
    if not value.startswith(_ENCRYPTED):
        return None
    name, sep, sealed = value.removeprefix(_SCHEME).partition(b":")
    if not value.startswith(_SCHEME) or not sep or not _KEY_NAME.match(name.decode("latin-1")):
        raise SecretError(f"key_ref {ref!r}: encrypted in a form this version cannot read")
    return name.decode(), sealed


def _encrypted_with(ref: str, value: bytes) -> str | None:
    encrypted = _encrypted(ref, value)
    return encrypted[0] if encrypted else None


def _label(ref: str, value: bytes) -> str:
    try:
        return _encrypted_with(ref, value) or UNENCRYPTED
    except SecretError:
        return UNREADABLE


class SecretStore:
    """The private keys under `P:secret:`; `keyring` None: no key file (see above)."""

    def __init__(self, store: Store, keyring: Keyring | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self._swap = store.redis.register_script(_SWAP)

    def _key(self, ref: str) -> str:
        return self.store.key("secret", check_ref(ref))

    def _seal(self, ref: str, pem: str) -> bytes:
        return self.keyring.encrypt(ref, pem) if self.keyring else pem.encode()

    def _open(self, ref: str, value: bytes) -> str:
        encrypted = _encrypted(ref, value)
        if encrypted is None:
            return value.decode()
        name, sealed = encrypted
        if self.keyring is None:
            raise SecretError(f"key_ref {ref!r}: encrypted with key {name!r}, but {SETTING} "
                              "is not set")  # fmt: skip
        return self.keyring.decrypt(ref, name, sealed)

    def put_key(self, ref: str, pem: str) -> None:
        """Store a private key under a new ref; storing the same key again is a no-op."""
        check_key(ref, pem)
        if not self.store.redis.set(self._key(ref), self._seal(ref, pem), nx=True):
            current = self.store.redis.get(self._key(ref))
            if current is None or self._open(ref, current) != pem:
                raise SecretError(f"key_ref {ref!r} already holds another key; use a new ref")

    def get_key(self, ref: str) -> str | None:
        raw = self.store.redis.get(self._key(ref))
        return self._open(ref, raw) if raw is not None else None

    def get_keys(self, refs: Iterable[str]) -> dict[str, str]:
        """The keys that exist among `refs`, in one round trip."""
        refs = sorted(set(refs))
        if not refs:
            return {}
        values = self.store.redis.mget([self._key(ref) for ref in refs])
        return {ref: self._open(ref, v) for ref, v in zip(refs, values, strict=True) if v}

    def delete_key(self, ref: str) -> None:
        self.store.redis.delete(self._key(ref))

    def refs(self) -> Iterator[str]:
        """Every stored ref (SCAN: Redis is not blocked however many there are)."""
        prefix = self.store.key("secret", "")
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        for key in self.store.redis.scan_iter(match=pattern, count=1000):
            yield key.decode().removeprefix(prefix)

    def census(self) -> dict[str, int]:
        """How many stored keys each key of the key file encrypted (by its name)."""
        counts: dict[str, int] = {}
        refs = sorted(self.refs())
        for start in range(0, len(refs), 500):
            batch = refs[start : start + 500]
            values = self.store.redis.mget([self._key(ref) for ref in batch])
            for ref, value in zip(batch, values, strict=True):
                if value is not None:
                    label = _label(ref, value)
                    counts[label] = counts.get(label, 0) + 1
        return counts

    def reencrypt(self, ref: str) -> bool | None:
        """Encrypt the key under `ref` with the keyring's first key, unless it already is:
        True if rewritten, False if it already was, None if there is no such key. The
        rewrite replaces only the value it read (a script compares and sets): a key
        replaced or deleted meanwhile is read again, never overwritten."""
        if self.keyring is None:
            raise ConfigError(f"{SETTING}: not set: there is no key to encrypt with")
        key = self._key(ref)
        while True:
            value = self.store.redis.get(key)
            if value is None:
                return None
            if _encrypted_with(ref, value) == self.keyring.primary:
                return False
            sealed = self.keyring.encrypt(ref, self._open(ref, value))
            if self._swap(keys=[key], args=[value, sealed]):
                return True
