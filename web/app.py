"""The console's application factory: pages, the REST API, login, metrics.

`create_app()` reads the same settings as every other `slb` command; tests pass
`test_config` (Flask's own keys and REDIS_URL, REDIS_PREFIX, ...) to override them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Flask, Response, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

from slb import config
from slb.storage.secrets import load_keyring
from web import auth, db, errors, metrics
from web.api import access as api_access
from web.api import audit as api_audit
from web.api import certificates as api_certificates
from web.api import instances as api_instances
from web.api import listeners as api_listeners
from web.api import node_groups as api_node_groups
from web.api import openapi as api_openapi
from web.api import pools as api_pools
from web.api import services as api_services
from web.api import status as api_status
from web.views import access, certificates, instances, listeners, overview
from web.views.common import datetime_filter


class _SessionInterface(SecureCookieSessionInterface):
    """Session cookies are Secure whenever the request came over TLS, not only when told."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = super().get_cookie_secure(app)
        return configured or (has_request_context() and request.is_secure)


def default_secret_key_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "openslb" / "console-secret-key"


def load_secret_key(path: Path) -> str:
    """The session signing key from `path`, created (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker made it first
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise config.ConfigError(f"{path}: the console's secret key is shorter than 32 characters")
    return key


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
"""Scripts only from the console itself (no inline script), and no framing."""


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.is_secure:  # served over TLS (console.tls_cert, or a trusted proxy said so)
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path != "/login" and not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(
    test_config: Mapping[str, Any] | None = None, settings: config.Settings | None = None
) -> Flask:
    settings = settings or config.load()
    console = settings.console
    app = Flask(__name__)
    app.config.from_mapping(
        REDIS_URL=settings.redis.url,
        REDIS_PREFIX=settings.redis.prefix,
        SECRET_KEY_FILE=console.secret_key_file or str(default_secret_key_file()),
        SESSION_COOKIE_NAME="openslb_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=console.secure_cookies or bool(console.tls_cert),
        PERMANENT_SESSION_LIFETIME=console.session_lifetime_s,
        SESSION_LIFETIME_S=console.session_lifetime_s,
        TOKEN_LIFETIME_DAYS=console.token_lifetime_days,
        MAX_CONTENT_LENGTH=1024 * 1024,
        LOGIN_ATTEMPTS=console.login_attempts,
        LOGIN_WINDOW_S=console.login_window_s,
        INSTANCES_PER_NAMESPACE=settings.cmi.instances_per_namespace,
        PAGE_SIZE=50,
    )
    if test_config is not None:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(Path(app.config["SECRET_KEY_FILE"]))
    app.session_interface = _SessionInterface()

    app.after_request(_security_headers)
    db.init_app(
        app, replace(settings.redis, url=app.config["REDIS_URL"]), load_keyring(settings.secrets)
    )
    metrics.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    app.add_template_filter(datetime_filter, "datetime")
    # Every blueprint, named here rather than attached by importing a package: sign-in,
    # the pages, then the API under /api/v1 (its OpenAPI document lists the API blueprints
    # registered here).
    app.register_blueprint(auth.bp)
    app.register_blueprint(overview.bp)
    app.register_blueprint(listeners.bp)
    app.register_blueprint(instances.bp)
    app.register_blueprint(certificates.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(api_status.bp)
    app.register_blueprint(api_listeners.bp)
    app.register_blueprint(api_instances.bp)
    app.register_blueprint(api_pools.bp)
    app.register_blueprint(api_node_groups.bp)
    app.register_blueprint(api_services.bp)
    app.register_blueprint(api_certificates.bp)
    app.register_blueprint(api_audit.bp)
    app.register_blueprint(api_access.bp)
    app.register_blueprint(api_openapi.bp)
    return app
