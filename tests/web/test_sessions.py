"""Sign-ins, sessions and API tokens against an attacker: lockouts, replayed cookies,
tokens that outlive what made them (issue #14)."""

from __future__ import annotations

import time

from flask.testing import FlaskClient

from slb.storage.store import Store
from tests.web.conftest import PASSWORD, Auth
from web.auth import Accounts, LoginLimiter, Role, User


def test_failures_from_one_address_never_lock_the_user_out_elsewhere(
    client: FlaskClient, auth: Auth
) -> None:
    """An attacker who sends wrong passwords for admin is slowed down; admin is not."""
    attacker = Auth(client.application.test_client())
    attacker.client.environ_base["REMOTE_ADDR"] = "198.18.9.9"
    codes = [attacker.login("admin", f"guess number {n}").status_code for n in range(8)]
    assert codes[:5] == [401] * 5
    assert set(codes[5:]) == {429}
    assert attacker.login("admin", PASSWORD).status_code == 429  # slowed, even if right
    assert auth.login("admin", PASSWORD).status_code == 302  # admin, from its own address


def test_each_further_failure_doubles_the_wait(store: Store) -> None:
    limiter = LoginLimiter(store, attempts=3, window_s=10)
    waits = [limiter.failed("198.18.9.9", "admin") for _ in range(6)]
    assert waits == [0, 0, 10, 20, 40, 80]
    assert 70 < (limiter.retry_after("198.18.9.9", "admin") or 0) <= 80
    assert limiter.retry_after("198.18.9.10", "admin") is None
    limiter.succeeded("198.18.9.9", "admin")
    assert limiter.retry_after("198.18.9.9", "admin") is None


def test_one_address_trying_many_users_waits_too(store: Store) -> None:
    limiter = LoginLimiter(store, attempts=2, window_s=10)
    for n in range(2 * LoginLimiter.SPRAY_FACTOR):
        limiter.failed("198.18.9.9", f"user{n}")
    assert limiter.retry_after("198.18.9.9", "someone-else") is not None


def test_a_cookie_replayed_after_sign_out_is_refused(client: FlaskClient, auth: Auth) -> None:
    auth.login("alice")
    cookie = client.get_cookie("openslb_session")
    assert cookie is not None
    assert auth.post("/logout").status_code == 302
    thief = client.application.test_client()
    thief.set_cookie("openslb_session", cookie.value)
    assert thief.get("/listeners").status_code == 302  # to the login page
    assert thief.get("/api/v1/me").status_code == 401


def test_a_password_change_and_sign_out_everywhere_end_the_other_sessions(
    client: FlaskClient, auth: Auth
) -> None:
    auth.login("alice")
    laptop = Auth(client.application.test_client())
    laptop.login("alice")
    phone = Auth(client.application.test_client())
    phone.login("alice")
    changed = auth.post(
        "/account/password",
        {"current_password": PASSWORD, "new_password": "a brand new passphrase"},
    )
    assert changed.status_code == 302
    assert client.get("/listeners").status_code == 200  # the session that changed it goes on
    assert laptop.client.get("/api/v1/me").status_code == 401
    assert phone.client.get("/api/v1/me").status_code == 401
    wrong = auth.post("/account/password", {"current_password": "nope", "new_password": "x" * 12})
    assert wrong.status_code == 422
    assert "wrong password" in wrong.get_data(as_text=True)
    phone.login("alice", "a brand new passphrase")
    assert auth.post("/account/sessions/end").status_code == 302
    assert client.get("/api/v1/me").status_code == 401
    assert phone.client.get("/api/v1/me").status_code == 401


def test_a_session_ends_after_its_lifetime_however_busy(client: FlaskClient, auth: Auth) -> None:
    client.application.config["SESSION_LIFETIME_S"] = 1
    auth.login("alice")
    deadline = time.monotonic() + 5
    while client.get("/api/v1/me").status_code == 200:  # polled as the console polls
        assert time.monotonic() < deadline, "the session outlived its lifetime"
        time.sleep(0.2)
    assert client.get("/listeners").status_code == 302


def test_a_token_made_with_a_token_dies_with_it(client: FlaskClient, store: Store) -> None:
    accounts = Accounts(store)
    parent, secret = accounts.create_token(User("alice", Role.OPERATOR), "ci", days=10)
    bearer = {"Authorization": f"Bearer {secret}"}
    made = client.post(
        "/api/v1/tokens", headers=bearer, json={"name": "child", "expires_in_days": 30}
    )
    assert made.status_code == 201
    child = made.get_json()
    assert child["parent"] == parent.id
    assert child["expires_at"] <= parent.expiry  # no longer than the token that made it
    grandchild = client.post(
        "/api/v1/tokens", headers={"Authorization": f"Bearer {child['secret']}"},
        json={"name": "grandchild"},
    ).get_json()  # fmt: skip
    assert client.get("/api/v1/me", headers=bearer).get_json()["token"] == parent.id
    mine = client.get("/api/v1/tokens", headers=bearer).get_json()["items"]
    assert next(t for t in mine if t["id"] == parent.id)["last_used_at"] is not None
    accounts.revoke(parent.id)
    for token in (child, grandchild):
        answer = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token['secret']}"})
        assert answer.status_code == 401


def test_an_expired_token_is_refused_and_lifetimes_are_bounded(
    client: FlaskClient, store: Store
) -> None:
    accounts = Accounts(store)
    token, secret = accounts.create_token(User("alice", Role.OPERATOR), "ci", days=1)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=bearer).status_code == 200
    raw = store.redis.hgetall(accounts.tokens_key)
    digest = next(iter(raw))
    store.redis.hset(accounts.tokens_key, digest, raw[digest].replace(
        str(token.expires_at).encode(), str(time.time() - 1).encode()))  # fmt: skip
    assert client.get("/api/v1/me", headers=bearer).status_code == 401
    _, secret = accounts.create_token(User("alice", Role.OPERATOR), "ci2")
    too_long = client.post(
        "/api/v1/tokens", headers={"Authorization": f"Bearer {secret}"},
        json={"name": "forever", "expires_in_days": 100000},
    )  # fmt: skip
    assert too_long.status_code == 422
    assert too_long.get_json()["errors"][0]["field"] == "expires_in_days"
