"""Private keys of TLS certificates, kept apart from the desired state.

A `Certificate` names its key by `key_ref`; the key itself lives here, so snapshots, the
change stream, the console and logs never carry key material. Refs are immutable: a new
key gets a new ref, so rotating a key is a Certificate change and thus a new revision
that every tier sees. Error messages name the ref, never the key.

Layout: `P:secret:REF` is a string holding the PEM private key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from slb.storage.store import Store

_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")


class SecretError(ValueError):
    """A key that cannot be stored or found; the message names the ref only."""


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


class SecretStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _key(self, ref: str) -> str:
        return self.store.key("secret", check_ref(ref))

    def put_key(self, ref: str, pem: str) -> None:
        """Store a private key under a new ref; storing the same key again is a no-op."""
        check_key(ref, pem)
        if not self.store.redis.set(self._key(ref), pem.encode(), nx=True):
            current = self.store.redis.get(self._key(ref))
            if current is None or current.decode() != pem:
                raise SecretError(f"key_ref {ref!r} already holds another key; use a new ref")

    def get_key(self, ref: str) -> str | None:
        raw = self.store.redis.get(self._key(ref))
        return raw.decode() if raw is not None else None

    def get_keys(self, refs: Iterable[str]) -> dict[str, str]:
        """The keys that exist among `refs`, in one round trip."""
        refs = sorted(set(refs))
        if not refs:
            return {}
        values = self.store.redis.mget([self._key(ref) for ref in refs])
        return {ref: v.decode() for ref, v in zip(refs, values, strict=True) if v is not None}

    def delete_key(self, ref: str) -> None:
        self.store.redis.delete(self._key(ref))
