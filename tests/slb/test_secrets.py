"""Private keys live apart from the desired state, under immutable refs."""

from __future__ import annotations

import pytest

from devbed.pki import key_pem
from slb.storage.secrets import SecretError, SecretStore
from slb.storage.store import Store


def test_keys_are_stored_once_per_ref_apart_from_the_desired_state(store: Store) -> None:
    secrets = SecretStore(store)
    pem = key_pem()
    secrets.put_key("shop-2025", pem)
    secrets.put_key("shop-2025", pem)  # the same key again: a no-op
    assert secrets.get_key("shop-2025") == pem
    assert secrets.get_key("nope") is None
    assert secrets.get_keys(["shop-2025", "nope"]) == {"shop-2025": pem}
    assert store.redis.get(store.key("secret", "shop-2025")) == pem.encode()
    assert store.revision() == 0  # a key is not a change of the desired state
    with pytest.raises(SecretError, match="already holds another key") as raised:
        secrets.put_key("shop-2025", key_pem())
    assert "PRIVATE" not in str(raised.value)
    secrets.delete_key("shop-2025")
    assert secrets.get_key("shop-2025") is None


@pytest.mark.parametrize(
    ("ref", "pem", "message"),
    [
        ("Bad_Ref", None, "key_ref 'Bad_Ref'"),
        ("ok", "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "not an"),
    ],
)
def test_bad_refs_and_keys_are_refused_without_echoing_the_key(
    store: Store, ref: str, pem: str | None, message: str
) -> None:
    with pytest.raises(SecretError, match=message) as raised:
        SecretStore(store).put_key(ref, pem or key_pem())
    assert "not a key\n" not in str(raised.value)
