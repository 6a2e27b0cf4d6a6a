"""The console's Redis: one connection pool per app, a `Store` per request on `g`."""

from __future__ import annotations

import redis
from flask import Flask, current_app, g

from slb.config import RedisSettings
from slb.operations import Operations
from slb.storage import connect
from slb.storage.secrets import Keyring
from slb.storage.store import Store
from web.readmodel import ReadModel

_POOL = "openslb.redis_pool"
_READ_MODEL = "openslb.read_model"
_KEYRING = "openslb.keyring"


def init_app(app: Flask, settings: RedisSettings, keyring: Keyring | None) -> None:
    """One pool for the app, authenticated as configured (`redis.username`, password file),
    and the keyring that encrypts uploaded private keys (`secrets.key_file`)."""
    app.extensions[_POOL] = connect.pool(settings)
    app.extensions[_READ_MODEL] = ReadModel()
    app.extensions[_KEYRING] = keyring


def get_store() -> Store:
    """This request's store (the client shares the app's connection pool)."""
    if "store" not in g:
        client = redis.Redis(connection_pool=current_app.extensions[_POOL])
        g.store = Store(client, prefix=current_app.config["REDIS_PREFIX"])
    store: Store = g.store
    return store


def read_model() -> ReadModel:
    model: ReadModel = current_app.extensions[_READ_MODEL]
    return model


def operations() -> Operations:
    """Writes as the signed-in user (or token): validated, conflict-checked and audited."""
    return Operations(
        get_store(),
        actor=g.user.actor,
        keyring=current_app.extensions[_KEYRING],
        instances_per_namespace=current_app.config["INSTANCES_PER_NAMESPACE"],
    )
