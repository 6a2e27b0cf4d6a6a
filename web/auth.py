"""Who may do what: users, roles, API tokens, login with a rate limit, and CSRF.

Users and tokens live in Redis under the store prefix, next to the state they guard:
  P:console:users            hash, name -> JSON {name, role, password_hash, created_at}
  P:console:tokens           hash, sha256(token) -> JSON {id, user, role, name, created_at,
                             expires_at, parent, last_used_at}
  P:console:session:SID      a signed-in session (`Sessions`)
  P:console:login-fail:...   counters of failed logins per (user, address) and per address
  P:console:login-wait:...   set while that pair or address must wait (expires)

Passwords are hashed with Argon2id (argon2-cffi); tokens are random and stored only as
their SHA-256, so a Redis dump gives away neither. A browser signs in with a password and
gets an HttpOnly, SameSite=Lax session cookie; every form and every cookie-authenticated
write must carry the session's CSRF token. Automation sends `Authorization: Bearer TOKEN`
and needs no CSRF token, since a browser never adds that header by itself.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from typing import Any, ParamSpec, TypeVar

import argon2
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from slb.storage.audit import AuditLog
from slb.storage.store import Store
from web.db import get_store

P = ParamSpec("P")
R = TypeVar("R")

_USER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.@]{0,62}[a-z0-9])?\Z")
MIN_PASSWORD = 10
MAX_TOKEN_DAYS = 365
LAST_USED_EVERY_S = 60
"""A token's last use is written at most this often (not a write per request)."""
_HASHER = "openslb.password_hasher"


class Role(IntEnum):
    """Each role may do everything the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise AuthError("role", "must be viewer, operator or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class AuthError(ValueError):
    """Bad input about users or tokens, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    token: str | None = None
    """The id of the API token this request came with, if any."""

    @property
    def actor(self) -> str:
        """How the audit trail names this user."""
        return f"{self.name} (token {self.token})" if self.token else self.name

    def can(self, role: Role) -> bool:
        return self.role >= role


@dataclass(frozen=True)
class Token:
    id: str
    user: str
    role: str
    name: str
    created_at: float
    expires_at: float = 0.0
    """Unix time it stops working (0, a token of before expiry: MAX_TOKEN_DAYS after
    creation)."""
    parent: str | None = None
    """The token it was made with, if one: it expires no later and is revoked with it."""
    last_used_at: float | None = None

    @property
    def expiry(self) -> float:
        return self.expires_at or self.created_at + MAX_TOKEN_DAYS * 86400

    def shown(self) -> dict[str, Any]:
        """As the API and the audit trail show it: with the time it expires (no secret)."""
        return {**asdict(self), "expires_at": self.expiry}


_REWRITE_RECORD = """if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end"""
"""Rewrite a token's record unless it changed (or was revoked) since it was read."""


class Accounts:
    """Users and API tokens in Redis."""

    def __init__(self, store: Store, hasher: argon2.PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or argon2.PasswordHasher()
        self.users_key = store.key("console", "users")
        self.tokens_key = store.key("console", "tokens")
        self._update_token = store.redis.register_script(_REWRITE_RECORD)

    # -- users ------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, role: Role) -> None:
        if not _USER_NAME.match(name):
            raise AuthError("name", "1-64 lowercase letters, digits, '-', '_', '.' or '@'")
        _check_password(password)
        record = {
            "name": name,
            "role": role.label,
            "password_hash": self.hasher.hash(password),
            "created_at": time.time(),
        }
        if not self.store.redis.hsetnx(self.users_key, name, json.dumps(record)):
            raise AuthError("name", f"a user named {name!r} exists")

    def _record(self, name: str) -> dict[str, Any] | None:
        raw = self.store.redis.hget(self.users_key, name)
        return json.loads(raw) if raw is not None else None

    def user(self, name: str) -> User | None:
        record = self._record(name)
        return User(name, Role.named(record["role"])) if record else None

    def users(self) -> list[dict[str, Any]]:
        """Every user without the password hash."""
        raw = self.store.redis.hgetall(self.users_key)
        out = []
        for value in raw.values():
            record = json.loads(value)
            out.append(
                {"name": record["name"], "role": record["role"], "created_at": record["created_at"]}
            )
        return sorted(out, key=lambda u: u["name"])

    def verify(self, name: str, password: str) -> User | None:
        record = self._record(name)
        try:
            # Verify against a throwaway hash when the user does not exist, so the time
            # taken does not tell who exists.
            stored = record["password_hash"] if record else self.hasher.hash(secrets.token_hex())
            self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return None
        if record is None:
            return None
        if self.hasher.check_needs_rehash(record["password_hash"]):
            record["password_hash"] = self.hasher.hash(password)
            self.store.redis.hset(self.users_key, name, json.dumps(record))
        return User(name, Role.named(record["role"]))

    def update_user(self, name: str, role: Role | None = None, password: str | None = None) -> None:
        record = self._record(name)
        if record is None:
            raise AuthError("name", f"no user named {name!r}")
        if role is not None:
            record["role"] = role.label
        if password is not None:
            _check_password(password)
            record["password_hash"] = self.hasher.hash(password)
        self.store.redis.hset(self.users_key, name, json.dumps(record))
        if password is not None:
            Sessions(self.store).end_all(name)
        if role is not None:
            self._retire_tokens_above(name, role)

    def delete_user(self, name: str) -> None:
        if not self.store.redis.hdel(self.users_key, name):
            raise AuthError("name", f"no user named {name!r}")
        Sessions(self.store).end_all(name)
        for token in self.tokens(user=name):
            self.revoke(token.id)

    def admins(self) -> list[str]:
        return [u["name"] for u in self.users() if u["role"] == Role.ADMIN.label]

    # -- tokens -----------------------------------------------------------------------------

    def create_token(
        self, user: User, name: str, role: Role | None = None, *, days: int = 90
    ) -> tuple[Token, str]:
        """A new token for `user`, with at most the user's role, for `days`; one made with a
        token (`user.token`) lives no longer than that one and is revoked with it. Returns
        it and its secret."""
        role = role or user.role
        if role > user.role:
            raise AuthError("role", f"cannot exceed your own role ({user.role.label})")
        if not 1 <= len(name) <= 64 or not name.isprintable():
            raise AuthError("name", "1-64 printable characters")
        if not 1 <= days <= MAX_TOKEN_DAYS:
            raise AuthError("expires_in_days", f"1-{MAX_TOKEN_DAYS} days")
        now = time.time()
        expires_at = now + days * 86400
        parent = self.token(user.token) if user.token else None
        if user.token and parent is None:
            raise AuthError("token", "the token this request came with was revoked")
        if parent is not None:
            expires_at = min(expires_at, parent.expiry)
        secret = "slb_" + secrets.token_urlsafe(32)
        token = Token(secrets.token_hex(6), user.name, role.label, name, now, expires_at,
                      parent.id if parent else None)  # fmt: skip
        self.store.redis.hset(self.tokens_key, _digest(secret), json.dumps(asdict(token)))
        if parent is not None and self.token(parent.id) is None:  # revoked meanwhile
            self.store.redis.hdel(self.tokens_key, _digest(secret))
            raise AuthError("token", "the token this request came with was revoked")
        return token, secret

    def token(self, token_id: str) -> Token | None:
        return next((t for t in self.tokens() if t.id == token_id), None)

    def tokens(self, user: str | None = None) -> list[Token]:
        raw = self.store.redis.hgetall(self.tokens_key)
        found = [Token(**json.loads(v)) for v in raw.values()]
        return sorted(
            (t for t in found if user is None or t.user == user), key=lambda t: t.created_at
        )

    def token_user(self, secret: str) -> User | None:
        digest = _digest(secret)
        raw = self.store.redis.hget(self.tokens_key, digest)
        if raw is None:
            return None
        token = Token(**json.loads(raw))
        now = time.time()
        if now >= token.expiry:
            return None
        owner = self.user(token.user)
        if owner is None:
            return None
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY_S:
            used = json.dumps(asdict(replace(token, last_used_at=now)))
            self._update_token(keys=[self.tokens_key], args=[digest, raw, used])
        # A token never does more than its owner may do now.
        return User(owner.name, min(owner.role, Role.named(token.role)), token=token.id)

    def revoke(self, token_id: str) -> Token:
        """Revoke the token and every token made with it, and with those."""
        raw = self.store.redis.hgetall(self.tokens_key)
        found = {Token(**json.loads(v)).id: (digest, Token(**json.loads(v)))
                 for digest, v in raw.items()}  # fmt: skip
        if token_id not in found:
            raise AuthError("id", f"no token {token_id!r}")
        doomed, frontier = {token_id}, {token_id}
        while frontier:
            frontier = {i for i, (_, t) in found.items() if t.parent in frontier} - doomed
            doomed |= frontier
        self.store.redis.hdel(self.tokens_key, *(found[i][0] for i in doomed))
        return found[token_id][1]

    def _retire_tokens_above(self, name: str, role: Role) -> None:
        for token in self.tokens(user=name):
            if Role.named(token.role) > role:
                self.revoke(token.id)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError("password", f"at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AuthError("password", "at most 1024 characters")


class Sessions:
    """Console sign-ins held server-side: the signed cookie names one, and only a live one
    counts, so a copied cookie dies with the sign-in it came from.

    A session lives `lifetime_s` from sign-in, never extended by use (the console's polling
    would keep it alive for ever), and ends at sign-out; all of a user's end when the user
    signs out everywhere, their password changes or they are deleted.
      P:console:session:SID     the user's name; expires with the session
      P:console:sessions:USER   set of the user's session ids (some may have expired)
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def _key(self, sid: str) -> str:
        return self.store.key("console", "session", sid)

    def _user_key(self, user: str) -> str:
        return self.store.key("console", "sessions", user)

    def start(self, user: str, lifetime_s: int) -> str:
        sid = secrets.token_urlsafe(32)
        pipe = self.store.redis.pipeline()
        pipe.set(self._key(sid), user, ex=lifetime_s)
        pipe.sadd(self._user_key(user), sid)
        pipe.expire(self._user_key(user), lifetime_s, gt=True)
        pipe.expire(self._user_key(user), lifetime_s, nx=True)
        pipe.execute()
        return sid

    def user_of(self, sid: str) -> str | None:
        raw = self.store.redis.get(self._key(sid))
        return raw.decode() if raw is not None else None

    def end(self, sid: str) -> None:
        user = self.user_of(sid)
        self.store.redis.delete(self._key(sid))
        if user is not None:
            self.store.redis.srem(self._user_key(user), sid)

    def end_all(self, user: str, keep: str | None = None) -> int:
        """End every session of `user` but `keep`; how many were live."""
        sids = [m.decode() for m in self.store.redis.smembers(self._user_key(user))]
        ended = [sid for sid in sids if sid != keep]
        if not ended:
            return 0
        live = int(self.store.redis.delete(*(self._key(sid) for sid in ended)))
        self.store.redis.srem(self._user_key(user), *ended)
        return live


class LoginLimiter:
    """Failed logins counted per (user, client address) and per client address, each with
    an exponential back-off.

    Keyed by the pair, so failures from one address never lock a user out of another: the
    right password from an address that has not failed still works (a lock per user lets
    anyone lock the admin out). The per-address count (any user names) stops one address
    from trying many users. `attempts` failures are free; the next doubles the wait each
    time, from `window_s` up to `MAX_BACKOFF_S`. One Lua script per failure: concurrent
    failures are all counted.
    """

    MAX_BACKOFF_S = 24 * 3600
    SPRAY_FACTOR = 4
    """An address may fail this many times `attempts`, over all user names, before it waits."""

    _FAILED = """
local attempts, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local longest = 0
for i = 1, #KEYS, 2 do
  local count = redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], cap)
  local free = attempts * tonumber(ARGV[3 + (i + 1) / 2])
  if count >= free then
    local wait = math.min(base * 2 ^ (count - free), cap)
    redis.call('SET', KEYS[i + 1], '1', 'EX', math.floor(wait))
    longest = math.max(longest, wait)
  end
end
return math.floor(longest)
"""

    def __init__(self, store: Store, attempts: int, window_s: int) -> None:
        self.store = store
        self.attempts = attempts
        self.window_s = window_s
        self._failed = store.redis.register_script(self._FAILED)

    def _keys(self, address: str, user: str) -> list[str]:
        pair = _digest(f"{user}\0{address}")[:32]
        return [
            self.store.key("console", "login-fail", "pair", pair),
            self.store.key("console", "login-wait", "pair", pair),
            self.store.key("console", "login-fail", "ip", address),
            self.store.key("console", "login-wait", "ip", address),
        ]

    def retry_after(self, address: str, user: str) -> int | None:
        """Seconds until this address may try this user again, or None if it may now."""
        keys = self._keys(address, user)
        waits = [int(t) for t in self.store.redis.pipeline().ttl(keys[1]).ttl(keys[3]).execute()]
        longest = max(waits)
        return longest if longest > 0 else None

    def failed(self, address: str, user: str) -> int:
        """Count a failure; the wait it starts (0: none yet)."""
        args = [self.attempts, self.window_s, self.MAX_BACKOFF_S, 1, self.SPRAY_FACTOR]
        return int(self._failed(keys=self._keys(address, user), args=args))

    def succeeded(self, address: str, user: str) -> None:
        self.store.redis.delete(*self._keys(address, user)[:2])


# -- wiring into Flask ----------------------------------------------------------------------

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = frozenset({"auth.login", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def accounts() -> Accounts:
    hasher: argon2.PasswordHasher = current_app.extensions[_HASHER]
    return Accounts(get_store(), hasher)


def limiter() -> LoginLimiter:
    cfg = current_app.config
    return LoginLimiter(get_store(), cfg["LOGIN_ATTEMPTS"], cfg["LOGIN_WINDOW_S"])


def audit(action: str, kind: str, key: str, before: Any, after: Any) -> None:
    store = get_store()
    AuditLog(store).record_document(
        who=g.user.actor, action=action, kind=kind, key=key,
        before=before, after=after, revision=store.revision(),
    )  # fmt: skip


def init_app(app: Flask) -> None:
    # Argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile) unless the
    # config says otherwise (tests use cheaper parameters to stay fast).
    app.extensions[_HASHER] = argon2.PasswordHasher(**app.config.get("PASSWORD_HASH_PARAMS", {}))
    app.before_request(_load_user)
    app.before_request(_require_login_and_csrf)
    # Globals, not a context processor, so imported macros see them too.
    app.jinja_env.globals.update(csrf_token=csrf_token, Role=Role)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    token: str = session["csrf"]
    return token


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _load_user() -> None:
    g.user = None
    header = request.headers.get("Authorization", "")
    g.via_token = bool(header)
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and secret.strip():
            g.user = accounts().token_user(secret.strip())
        return
    sid = session.get("sid")
    if isinstance(sid, str):
        name = Sessions(get_store()).user_of(sid)
        user = accounts().user(name) if name is not None else None
        if user is not None and session.get("role") == user.role.label:
            g.user = user
        else:
            # Signed out (here or everywhere), expired, deleted, or the role changed.
            session.clear()
    elif session.get("user"):
        session.clear()  # a cookie of a console before server-side sessions


def _require_login_and_csrf() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        if request.method in UNSAFE_METHODS and not g.via_token:
            _check_csrf()
        return None
    if g.user is None:
        if _is_api() or request.path == "/metrics" or request.headers.get("HX-Request"):
            abort(401)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.method in UNSAFE_METHODS and not g.via_token:
        _check_csrf()
    return None


def _check_csrf() -> None:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not expected or not sent or not hmac.compare_digest(str(sent), str(expected)):
        abort(403, description="missing or wrong CSRF token: reload the page and try again")


def require(role: Role) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Refuse the view (403) to users below `role`."""

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            if g.user is None or not g.user.can(role):
                abort(403, description=f"needs the {role.label} role")
            return view(*args, **kwargs)

        return wrapped

    return decorator


def client_address() -> str:
    return request.remote_addr or "unknown"


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    if request.method == "GET":
        return render_template("login.html")
    name = request.form.get("username", "").strip().lower()
    password = request.form.get("password", "")
    address = client_address()
    wait = limiter().retry_after(address, name)
    if wait is not None:
        message = f"Too many failed logins. Try again in {wait} seconds."
        return render_template("login.html", error=message), 429, {"Retry-After": str(wait)}
    user = accounts().verify(name, password)
    if user is None:
        limiter().failed(address, name)
        return render_template("login.html", error="Wrong user name or password."), 401, {}
    limiter().succeeded(address, name)
    session.clear()  # a new session on login: no fixation
    session.permanent = True
    _start_session(user.name)
    session["role"] = user.role.label
    csrf_token()
    target = request.args.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("overview.index")
    return redirect(target)


def _start_session(name: str) -> None:
    session["sid"] = Sessions(get_store()).start(name, current_app.config["SESSION_LIFETIME_S"])


def set_own_password(current: str, new: str) -> None:
    """The signed-in user changes their password (AuthError names the field at fault): their
    other sessions end; one signed in with a cookie goes on under a new id."""
    store = accounts()
    if store.verify(g.user.name, current) is None:
        raise AuthError("current_password", "wrong password")
    try:
        store.update_user(g.user.name, password=new)
    except AuthError as exc:
        raise AuthError("new_password", exc.message) from None
    audit("update", "User", g.user.name, None, {"name": g.user.name, "password_changed": True})
    if "sid" in session:
        _start_session(g.user.name)


def sign_out_everywhere() -> None:
    """End every session of the signed-in user, this one too."""
    ended = Sessions(get_store()).end_all(g.user.name)
    audit("delete", "Session", g.user.name, {"sessions": ended}, None)
    session.clear()


@bp.post("/logout")
def logout() -> Response:
    if isinstance(sid := session.get("sid"), str):
        Sessions(get_store()).end(sid)
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.login"))
