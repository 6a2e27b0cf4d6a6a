"""The console's Redis: one connection pool per app, a `Store` per request on `g`."""

from __future__ import annotations

import redis
from flask import Flask, current_app, g

from slb.config import RedisSettings
from slb.operations import Operations
from slb.storage import connect
from slb.storage.store import Store
from web.readmodel import ReadModel

_POOL = "openslb.redis_pool"
_READ_MODEL = "openslb.read_model"


def init_app(app: Flask, settings: RedisSettings) -> None:
    """One pool for the app, authenticated as configured (`redis.username`, password file)."""
    app.extensions[_POOL] = connect.pool(settings)
    app.extensions[_READ_MODEL] = ReadModel()


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
    return Operations(get_store(), actor=g.user.actor)
