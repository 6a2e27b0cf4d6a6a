"""The console encrypts uploaded private keys with `secrets.key_file`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import argon2

from devbed.pki import chain
from devbed.redis import RedisServer
from slb import config
from slb.storage.secrets import SecretStore, add_key
from slb.storage.store import Store
from tests.web.conftest import CHEAP_HASH
from web.app import create_app
from web.auth import Accounts, Role


def test_an_uploaded_key_is_stored_encrypted(
    redis_server: RedisServer, store: Store, tmp_path: Path, token: Any
) -> None:
    path = tmp_path / "secrets.keys"
    keyring = add_key(path, "console-1")
    settings = replace(config.Settings(), secrets=config.SecretsSettings(key_file=str(path)))
    Accounts(store, argon2.PasswordHasher(**CHEAP_HASH)).create_user(
        "alice", "x" * 20, Role.OPERATOR
    )
    app = create_app(
        {"TESTING": True, "REDIS_URL": redis_server.url, "REDIS_PREFIX": store.prefix,
         "SECRET_KEY_FILE": str(tmp_path / "secret-key")},
        settings=settings,
    )  # fmt: skip
    pair = chain("shop.example.test")
    made = app.test_client().post(
        "/api/v1/certificates",
        headers=token("alice"),
        json={"name": "shop", "chain_pem": pair.chain_pem, "key_pem": pair.key_pem},
    )
    assert made.status_code == 201, made.get_json()
    (ref,) = SecretStore(store).refs()
    stored = store.redis.get(store.key("secret", ref))
    assert stored is not None
    assert stored.startswith(b"openslb:enc:aesgcm:v1:console-1:")
    assert b"PRIVATE KEY" not in stored
    assert SecretStore(store, keyring).get_key(ref) == pair.key_pem
