"""Certificate uploads: the pair is checked before anything is written; keys stay apart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devbed.pki import Chain, chain
from devbed.pki import key_pem as other_key_pem
from slb.certificates import check_pair, inspect
from slb.model import Certificate, ModelError
from slb.operations import Operations
from slb.storage.secrets import SecretStore
from slb.storage.store import ConflictError, Store


def fields(exc: pytest.ExceptionInfo[ModelError]) -> list[str]:
    return [e.field for e in exc.value.errors]


def test_a_good_pair_is_described_and_gets_a_stable_ref() -> None:
    pair = chain("shop.example.test", "www.example.test", days=90)
    checked = check_pair(pair.chain_pem, pair.key_pem)
    assert checked.info.subject == "CN=shop.example.test"
    assert checked.info.issuer == "CN=Test Intermediate"
    assert checked.info.sans == ("shop.example.test", "www.example.test")
    assert checked.info.chain_length == 2
    assert 88 <= checked.info.days_left() <= 90
    assert not checked.info.expires_soon()
    assert checked.key_ref.startswith("key-")
    assert check_pair(pair.chain_pem, pair.key_pem).key_ref == checked.key_ref
    assert inspect(pair.leaf_pem).fingerprint_sha256 == checked.info.fingerprint_sha256


def test_expiring_soon_is_a_warning_not_an_error() -> None:
    pair = chain(days=10)
    info = check_pair(pair.chain_pem, pair.key_pem).info
    assert info.expires_soon()
    assert 8 <= info.days_left() <= 10


@pytest.mark.parametrize(
    ("make", "field", "message"),
    [
        (lambda c: (c.chain_pem, other_key_pem()), "key_pem", "does not match"),
        (
            lambda c: (c.chain_pem, "-----BEGIN PRIVATE KEY-----\nxx\n"),
            "key_pem",
            "not an unencrypted",
        ),
        (lambda c: (c.intermediate_pem + c.leaf_pem, c.key_pem), "chain_pem", "did not issue"),
        (lambda c: ("hello", c.key_pem), "chain_pem", "not a PEM certificate chain"),
        (lambda c: (c.chain_pem + c.key_pem, c.key_pem), "chain_pem", "contains a private key"),
    ],
    ids=["wrong-key", "garbage-key", "wrong-order", "not-pem", "key-in-chain"],
)
def test_bad_pairs_are_refused_naming_the_field(
    make: Callable[[Chain], tuple[str, str]], field: str, message: str
) -> None:
    chain_pem, key_pem = make(chain())
    with pytest.raises(ModelError) as exc:
        check_pair(chain_pem, key_pem)
    assert field in fields(exc)
    assert message in str(exc.value)
    assert "PRIVATE KEY" not in str(exc.value)


def test_expired_and_not_yet_valid_are_refused() -> None:
    expired = chain(days=-1)
    with pytest.raises(ModelError, match="the certificate expired on") as exc:
        check_pair(expired.chain_pem, expired.key_pem)
    assert fields(exc) == ["chain_pem"]
    future = chain(days=90, starts_in_days=2)
    with pytest.raises(ModelError, match="not valid before"):
        check_pair(future.chain_pem, future.key_pem)


def test_operations_store_the_chain_and_keep_the_key_apart(store: Store) -> None:
    ops = Operations(store, actor="alice")
    pair = chain()
    stored, info = ops.put_certificate("shop", pair.chain_pem, pair.key_pem, expect=0)
    assert stored.obj.key_ref == check_pair(pair.chain_pem, pair.key_pem).key_ref
    assert info.subject == "CN=shop.example.test"
    assert SecretStore(store).get_key(stored.obj.key_ref) is not None
    entry = ops.audit.entries(kind="Certificate")[0]
    assert entry.action == "create"
    assert "PRIVATE KEY" not in repr(entry)
    with pytest.raises(ConflictError):
        ops.put_certificate("shop", pair.chain_pem, pair.key_pem, expect=0)
    rotated = chain()
    with pytest.raises(ConflictError):
        ops.put_certificate("shop", rotated.chain_pem, rotated.key_pem, expect=stored.revision - 1)
    new, _ = ops.put_certificate("shop", rotated.chain_pem, rotated.key_pem, expect=stored.revision)
    assert new.obj.key_ref != stored.obj.key_ref

    # A bad upload writes nothing, not even the key.
    before = store.revision()
    with pytest.raises(ModelError):
        ops.put_certificate("other", pair.chain_pem, other_key_pem(), expect=0)
    assert store.revision() == before
    assert store.get(Certificate, "other") is None


def test_certificates_in_use_cannot_be_removed(store: Store) -> None:
    ops = Operations(store, actor="alice")
    pair = chain()
    stored, _ = ops.put_certificate("shop", pair.chain_pem, pair.key_pem, expect=0)
    ops.put_pool({"name": "default", "cidrs": ["198.18.0.0/24"]})
    ops.add_load_balancer({"name": "public", "vip": "198.18.0.10"})
    ops.add_listener({
        "name": "web", "load_balancer": "public", "protocol": "HTTPS", "port": 443,
        "certificates": ["shop"], "selector": {"match_labels": {"app": "shop"}},
        "target_port": "http",
    })  # fmt: skip
    with pytest.raises(ModelError, match="still used by listeners: web"):
        ops.remove_certificate("shop")
    ops.remove_listener("web")
    ops.remove_certificate("shop")
    assert store.get(Certificate, "shop") is None
    assert SecretStore(store).get_key(stored.obj.key_ref) is None
