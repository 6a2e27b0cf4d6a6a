"""Errors as the client wants them: JSON naming each field for the API, a page otherwise."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from cmi.model import ModelError
from cmi.store import ConflictError


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
