"""The console under test: the real app on real Redis, each test under its own key prefix.

Shaped like Flask's tutorial: `app`, `client`, `runner`, and an `auth` helper that signs
in through the real login form (so every test also goes through CSRF and the session).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import argon2
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from werkzeug.test import TestResponse

from devbed.redis import RedisServer
from slb.operations import Operations
from slb.storage.store import Store
from web.app import create_app
from web.auth import Accounts, Role

PASSWORD = "correct horse battery"
CHEAP_HASH: dict[str, Any] = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
"""Argon2id parameters that keep tests fast; the product uses argon2-cffi's defaults."""
USERS = {"admin": Role.ADMIN, "alice": Role.OPERATOR, "victor": Role.VIEWER}


def make_app(redis_server: RedisServer, store: Store, tmp_path: Path, **extra: Any) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "REDIS_URL": redis_server.url,
            "REDIS_PREFIX": store.prefix,
            "SECRET_KEY_FILE": str(tmp_path / "secret-key"),
            "PASSWORD_HASH_PARAMS": CHEAP_HASH,
            **extra,
        }
    )


@pytest.fixture
def app(redis_server: RedisServer, store: Store, tmp_path: Path) -> Flask:
    accounts = Accounts(store, argon2.PasswordHasher(**CHEAP_HASH))
    for name, role in USERS.items():
        accounts.create_user(name, PASSWORD, role)
    return make_app(redis_server, store, tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def csrf_of(page: TestResponse) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert found, "no CSRF token on the page"
    return found.group(1)


class Auth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def login(self, user: str = "alice", password: str = PASSWORD) -> TestResponse:
        page = self.client.get("/login")
        response = self.client.post(
            "/login",
            data={"username": user, "password": password, "csrf_token": csrf_of(page)},
        )
        if response.status_code == 302:
            self.csrf = csrf_of(self.client.get("/"))
        return response

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> TestResponse:
        """A form post with this session's CSRF token, as the browser sends it."""
        return self.client.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


@pytest.fixture
def ops(store: Store) -> Operations:
    """An instance and a pool to put listeners on, made as an operator would."""
    ops = Operations(store, actor="setup")
    ops.put_pool({"name": "default", "cidrs": ["198.18.0.0/24"]})
    ops.add_load_balancer({"name": "public", "vip": "198.18.0.10", "allowed_namespaces": ["shop"]})
    return ops


@pytest.fixture
def token(store: Store) -> Any:
    """Bearer headers for each role, as automation would send them."""
    accounts = Accounts(store)

    def headers(user: str = "alice") -> dict[str, str]:
        owner = accounts.user(user)
        assert owner is not None
        _, secret = accounts.create_token(owner, f"{user}-test")
        return {"Authorization": f"Bearer {secret}"}

    return headers
