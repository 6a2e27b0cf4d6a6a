"""Every Redis client of openslb is made here, so each authenticates the same way.

A deployment with ACL users (`slb redis-acl`) names its user in `redis.username` (or the
URL) and keeps the password in the file `redis.password_file`: the password is read when
a client is made and handed to redis-py (or Celery) in memory, so it sits in no setting,
no environment variable, no command line and no log line (Celery prints URLs masked).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import redis

from slb.config import ConfigError, RedisSettings

log = logging.getLogger(__name__)


def credentials(settings: RedisSettings) -> dict[str, str]:
    """The username and password to add to the URL's, as keyword arguments (maybe none)."""
    url = urlsplit(settings.url)
    out: dict[str, str] = {}
    if settings.username:
        if url.username:
            raise ConfigError(
                "redis.username: the user is named in redis.url too; name it in one place"
            )
        out["username"] = settings.username
    if settings.password_file:
        if url.password:
            raise ConfigError(
                "redis.password_file: redis.url carries a password too; keep it in the file only"
            )
        out["password"] = read_password(settings.password_file)
    return out


def read_password(path: str) -> str:
    """The password in `path` (one line; surrounding whitespace is not part of it)."""
    try:
        password = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"redis.password_file: cannot read {path}: {reason}") from None
    if not password:
        raise ConfigError(f"redis.password_file: {path} is empty")
    return password


def client(settings: RedisSettings) -> redis.Redis[bytes]:
    """A client of the Redis in `settings`, authenticated as configured."""
    return redis.Redis(connection_pool=pool(settings))


def pool(settings: RedisSettings) -> redis.ConnectionPool:
    """A connection pool (for clients that share one, like the console's per request).

    Every wait on Redis is bounded (`redis.timeout_s`): a link that drops without closing
    (a failover, a firewall's idle timeout) fails the call instead of hanging the caller
    with its locks held; keepalives and health checks find such a link between calls.
    """
    if settings.timeout_s < 3:
        raise ConfigError(
            f"redis.timeout_s: {settings.timeout_s} s is too short: blocking reads wait up to 2 s"
        )
    auth = credentials(settings)
    tcp = {"socket_keepalive": True} if urlsplit(settings.url).scheme != "unix" else {}
    return redis.ConnectionPool.from_url(
        settings.url, username=auth.get("username"), password=auth.get("password"),
        socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s,
        health_check_interval=30, **tcp,
    )  # fmt: skip


def until_done(
    stop: threading.Event,
    work: Callable[[], object],
    *,
    outages: tuple[type[Exception], ...] = (redis.RedisError,),
    retry_s: float = 1.0,
) -> bool:
    """Run `work`, waiting out a Redis outage (a restart, a failover) until it succeeds
    or `stop` is set; return whether it ran. For the loops of long-lived threads, which
    must outlive the outage rather than die of it (`outages`: what to wait out)."""
    while not stop.is_set():
        try:
            work()
            return True
        except outages as exc:
            log.warning("Redis unreachable (%s); retrying in %.0f s", exc, retry_s)
            stop.wait(retry_s)
    return False
