"""Errors as the client wants them: JSON naming each field for the API, a page otherwise."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from slb.model import ModelError
from slb.storage.store import ConflictError


def error_body(errors: list[dict[str, str]]) -> dict[str, Any]:
    return {"errors": errors}


def model_error_response(exc: ModelError) -> tuple[Response, int]:
    return jsonify(error_body([{"field": e.field, "message": e.message} for e in exc.errors])), 422


def conflict_response(exc: ConflictError) -> tuple[Response, int]:
    return jsonify(
        error_body([{"field": "version", "message": str(exc) + "; read it again and retry"}])
    ), 409


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ModelError, model_error_response)
    app.register_error_handler(ConflictError, conflict_response)
    app.register_error_handler(redis.RedisError, _store_unreachable)


RETRY_AFTER_S = 5
"""What a client hears while Redis restarts or fails over (seconds, not minutes)."""


def _store_unreachable(exc: redis.RedisError) -> Response:
    """Redis down is the operator's first question, so the answer names it (503, not 500)."""
    current_app.logger.warning("%s %s: the store is unreachable: %s", request.method,
                               request.path, exc)  # fmt: skip
    message = "the store (Redis) is unreachable; try again in a few seconds"
    if request.method not in ("GET", "HEAD"):
        message += " (read it first: a change sent just before may have landed)"
    response = make_response(_http_error(ServiceUnavailable(message)))
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    if request.path.startswith("/api/") or request.path == "/metrics":
        response = jsonify(error_body([{"field": "", "message": exc.description or exc.name}]))
        response.status_code = code
        if code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="openslb"'
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response
    return render_template("error.html", code=code, error=exc), code
