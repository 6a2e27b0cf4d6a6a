"""Private keys live apart from the desired state, under immutable refs."""

from __future__ import annotations

import base64
import getpass
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from devbed.pki import chain, key_pem
from devbed.redis import RedisServer
from slb.cli import main
from slb.config import ConfigError, SecretsSettings
from slb.operations import Operations
from slb.storage.audit import AuditLog
from slb.storage.secrets import (
    Keyring,
    SecretError,
    SecretStore,
    add_key,
    load_keyring,
    read_key_file,
    too_open,
)
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


# -- encrypted at rest (secrets.key_file) -------------------------------------------------

KEY_PREFIX = b"openslb:enc:aesgcm:v1:"


def key_file(tmp_path: Path, *names: str) -> Path:
    """A key file holding `names`, the first one first (as `slb secrets new-key` makes it)."""
    path = tmp_path / "secrets.keys"
    for name in reversed(names):
        add_key(path, name)
    return path


def keyring(tmp_path: Path, *names: str) -> Keyring:
    return read_key_file(key_file(tmp_path, *names))


def raw(store: Store, ref: str) -> bytes:
    value = store.redis.get(store.key("secret", ref))
    assert value is not None
    return value


def test_with_a_key_file_redis_holds_no_key_material(store: Store, tmp_path: Path) -> None:
    secrets = SecretStore(store, keyring(tmp_path, "a"))
    pem = key_pem()
    secrets.put_key("shop-1", pem)
    stored = raw(store, "shop-1")
    assert stored.startswith(KEY_PREFIX + b"a:")
    assert b"PRIVATE KEY" not in stored
    assert not any(line.encode() in stored for line in pem.splitlines()[1:-1])
    assert secrets.get_key("shop-1") == pem
    assert secrets.get_keys(["shop-1", "nope"]) == {"shop-1": pem}
    secrets.put_key("shop-1", pem)  # the same key again: still a no-op, though sealed anew
    assert raw(store, "shop-1") == stored
    with pytest.raises(SecretError, match="already holds another key"):
        secrets.put_key("shop-1", key_pem())


def test_keys_rotate_new_key_then_reencrypt_then_the_old_key_goes(
    store: Store, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = key_file(tmp_path, "a")
    legacy, under_a, under_b = key_pem(), key_pem(), key_pem()
    SecretStore(store).put_key("legacy", legacy)  # before there was a key file
    SecretStore(store, read_key_file(path)).put_key("under-a", under_a)
    env = {"OPENSLB_CONFIG": "", "OPENSLB_REDIS_URL": redis_server.url,
           "OPENSLB_REDIS_PREFIX": store.prefix, "OPENSLB_SECRETS_KEY_FILE": str(path)}  # fmt: skip

    added = CliRunner().invoke(main, ["secrets", "new-key", "--name", "b"], env=env)
    assert added.exit_code == 0, added.output
    rotated = SecretStore(store, read_key_file(path))
    assert read_key_file(path).names == ("b", "a")
    assert rotated.get_keys(["legacy", "under-a"]) == {"legacy": legacy, "under-a": under_a}
    rotated.put_key("under-b", under_b)
    assert raw(store, "under-b").startswith(KEY_PREFIX + b"b:")

    result = CliRunner().invoke(main, ["secrets", "reencrypt"], env=env)
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 of 3 with key 'b' (1 already were" in result.output
    assert "now encrypted with: b 3" in result.output
    assert all(raw(store, ref).startswith(KEY_PREFIX + b"b:") for ref in rotated.refs())
    entry = AuditLog(store).entries(limit=1, action="reencrypt")[0]
    assert (entry.kind, entry.key, entry.who) == ("PrivateKeys", "b", f"cli:{getpass.getuser()}")
    assert entry.before == {"encrypted_with": {"(unencrypted)": 1, "a": 1, "b": 1}}
    assert entry.after == {"encrypted_with": {"b": 3}}

    again = CliRunner().invoke(main, ["secrets", "reencrypt"], env=env)
    assert "re-encrypted 0 of 3" in again.output  # idempotent

    lines = [line for line in path.read_text().splitlines() if not line.startswith("a ")]
    path.write_text("\n".join(lines) + "\n")
    only_b = SecretStore(store, read_key_file(path))
    assert read_key_file(path).names == ("b",)
    assert only_b.get_keys(["legacy", "under-a", "under-b"]) == {
        "legacy": legacy, "under-a": under_a, "under-b": under_b,
    }  # fmt: skip


def test_a_value_moved_to_another_ref_does_not_decrypt(store: Store, tmp_path: Path) -> None:
    secrets = SecretStore(store, keyring(tmp_path, "a"))
    secrets.put_key("shop-1", key_pem())
    store.redis.set(store.key("secret", "evil-1"), raw(store, "shop-1"))
    with pytest.raises(SecretError, match=r"^key_ref 'evil-1': does not decrypt with key 'a'"):
        secrets.get_key("evil-1")


def test_a_key_not_at_hand_is_named_with_the_ref_and_no_key_material(
    store: Store, tmp_path: Path
) -> None:
    pem = key_pem()
    SecretStore(store, keyring(tmp_path / "1", "a")).put_key("shop-1", pem)
    other_a = keyring(tmp_path / "2", "a")  # the same name, other bytes
    cases = [
        (SecretStore(store, keyring(tmp_path / "3", "b")), "encrypted with key 'a', which "
         "secrets.key_file does not hold"),
        (SecretStore(store), "encrypted with key 'a', but secrets.key_file is not set"),
        (SecretStore(store, other_a), "does not decrypt with key 'a'"),
    ]  # fmt: skip
    for secrets, message in cases:
        for read in (
            lambda s=secrets: s.get_key("shop-1"),
            lambda s=secrets: s.get_keys(["shop-1"]),
        ):
            with pytest.raises(SecretError) as raised:
                read()
            assert str(raised.value).startswith(f"key_ref 'shop-1': {message}")
            assert "PRIVATE" not in str(raised.value)
            assert base64.b64encode(other_a.keys[0][1]).decode() not in str(raised.value)


def test_reencrypt_does_not_lose_a_write_made_while_it_runs(store: Store, tmp_path: Path) -> None:
    """The value is replaced only if it is still the one read (compare and set)."""
    first, replaced = key_pem(), key_pem()
    SecretStore(store).put_key("shop-1", first)

    class Interrupted(Keyring):
        def encrypt(self, ref: str, pem: str) -> bytes:
            if pem == first:  # another writer comes in between the read and the write
                store.redis.set(store.key("secret", ref), replaced.encode())
            return super().encrypt(ref, pem)

    ring = Interrupted(keyring(tmp_path, "a").keys)
    assert SecretStore(store, ring).reencrypt("shop-1") is True
    assert SecretStore(store, ring).get_key("shop-1") == replaced
    assert raw(store, "shop-1").startswith(KEY_PREFIX + b"a:")
    assert SecretStore(store, ring).reencrypt("gone") is None


def test_a_key_file_others_may_read_is_refused_naming_the_setting(tmp_path: Path) -> None:
    path = key_file(tmp_path, "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"^secrets\.key_file: .* \(mode 0644\): chmod 600"):
        load_keyring(SecretsSettings(key_file=str(path)))
    path.chmod(0o640)
    if os.geteuid() == 0:  # root's files may be group-readable; this one is a user's
        os.chown(path, 65534, -1)
    with pytest.raises(ConfigError, match=r"\(mode 0640\)"):
        read_key_file(path)
    with pytest.raises(ConfigError, match=r"\(mode 0640\)"):
        add_key(path, "b")


@pytest.mark.parametrize(
    ("mode", "owner", "refused"),
    [(0o600, 1000, False), (0o400, 1000, False), (0o640, 1000, True), (0o604, 1000, True),
     (0o440, 0, False), (0o640, 0, False), (0o660, 0, True), (0o644, 0, True)],
)  # fmt: skip
def test_only_root_may_let_its_group_read_a_key_file(mode: int, owner: int, refused: bool) -> None:
    """As a Kubernetes Secret volume with an fsGroup mounts it: root's, 0440."""
    assert too_open(mode, owner) is refused


def test_new_key_prepends_and_prints_no_key(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "keys"
    made = CliRunner().invoke(main, ["secrets", "new-key", "--file", str(path), "--name", "a"])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    added = CliRunner().invoke(main, ["secrets", "new-key", "--file", str(path)])
    assert added.exit_code == 0, added.output
    keys = read_key_file(path)
    assert keys.names[1] == "a"
    assert keys.names[0].startswith("key-")
    assert path.read_text().startswith("# openslb key file")  # the comment stays on top
    for _, secret in keys.keys:
        assert base64.b64encode(secret).decode() not in made.output + added.output
        assert len(secret) == 32
    assert repr(keys) == f"Keyring({keys.names[0]}, a)"
    twice = CliRunner().invoke(main, ["secrets", "new-key", "--file", str(path), "--name", "a"])
    assert twice.exit_code == 2
    assert "holds a key named 'a' already" in twice.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("a c2VjcmV0\n", "line 1: key 'a' is not 32 bytes in base64"),
        ("# c\na b c\n", "line 2: expected NAME BASE64"),
        (f"a:b {'A' * 43}=\n", "line 1: key name"),
        (f"a {'A' * 43}=\na {'B' * 43}=\n", "line 2: a second key named 'a'"),
    ],
)
def test_a_bad_key_file_is_named_without_quoting_its_lines(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=f"^secrets.key_file: {path}.*{message}") as raised:
        read_key_file(path)
    assert "c2VjcmV0" not in str(raised.value)
    assert "AAAA" not in str(raised.value)


def test_without_a_key_file_keys_are_written_unencrypted(tmp_path: Path) -> None:
    assert load_keyring(SecretsSettings()) is None
    path = key_file(tmp_path, "a")
    assert load_keyring(SecretsSettings(key_file=str(path))) == read_key_file(path)
    result = CliRunner().invoke(main, ["secrets", "reencrypt"], env={"OPENSLB_CONFIG": ""})
    assert result.exit_code == 2
    assert "secrets.key_file: not set" in result.output


def test_operations_encrypt_uploaded_keys_with_the_keyring(store: Store, tmp_path: Path) -> None:
    ring = keyring(tmp_path, "a")
    pair = chain("shop.example.test")
    stored, _ = Operations(store, actor="alice", keyring=ring).put_certificate(
        "shop", pair.chain_pem, pair.key_pem
    )
    assert raw(store, stored.obj.key_ref).startswith(KEY_PREFIX + b"a:")
    assert SecretStore(store, ring).get_key(stored.obj.key_ref) == pair.key_pem
