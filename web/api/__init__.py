"""The REST API under /api/v1: everything the pages do, as JSON, described by OpenAPI.

Each view is registered with `operation(...)`, which adds the Flask route, applies the
role check and records what the OpenAPI document says about it (body, responses, query
parameters), so the document is generated from the same table that routes requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from werkzeug.exceptions import BadRequest

from slb.model import FieldError, ModelError
from web.auth import Role, require

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_VERSION = 2**53 - 1


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    rule: str
    method: str
    endpoint: str
    summary: str
    tag: str
    role: Role
    body: str | None
    responses: dict[int, str | None]
    query: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def path(self) -> str:
        """The OpenAPI form of the Flask rule: <name> -> {name}."""
        return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", self.rule)


OPERATIONS: list[Operation] = []


def operation(
    rule: str,
    method: str,
    *,
    summary: str,
    tag: str,
    role: Role,
    ok: tuple[int, str | None],
    body: str | None = None,
    errors: Sequence[int] = (),
    query: Sequence[Param] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Route `method rule` to the view, for `role` and up, and describe it in the document."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        guarded = require(role)(view)
        bp.add_url_rule(rule, view.__name__, guarded, methods=[method])
        responses: dict[int, str | None] = {ok[0]: ok[1], 401: "Errors", 403: "Errors"}
        if body is not None:
            responses.update({400: "Errors", 413: "Errors", 422: "Errors"})
        if "<" in rule:
            responses[404] = "Errors"
        for code in errors:
            responses[code] = "Errors"
        OPERATIONS.append(
            Operation(
                rule, method, view.__name__, summary, tag, role, body, responses, tuple(query)
            )
        )
        return guarded

    return decorator


def json_body() -> dict[str, Any]:
    """The request's JSON object, or 400 naming what is wrong with it."""
    try:
        data = request.get_json(force=True, silent=False)
    except BadRequest:
        raise BadRequest("malformed JSON: the body must be one JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("malformed JSON: the body must be one JSON object")
    return data


def field_error(kind: str, name: str, message: str) -> ModelError:
    return ModelError(kind, [FieldError(field=name, message=message)])


def take_version(
    kind: str, data: dict[str, Any] | None = None, *, required: bool = True
) -> int | None:
    """The version the client read (body `version`, `If-Match` or `?version=`), else 428."""
    raw: Any = None
    if data is not None and "version" in data:
        raw = data.pop("version")
    elif request.headers.get("If-Match"):
        raw = request.headers["If-Match"].strip().strip('"').removeprefix("W/").strip('"')
    elif "version" in request.args:
        raw = request.args["version"]
    if raw is None:
        if required:
            from werkzeug.exceptions import PreconditionRequired  # noqa: PLC0415

            raise PreconditionRequired(
                "version: required: send the version you read (field 'version', If-Match "
                "or ?version=) so a concurrent change is not overwritten"
            )
        return None
    if isinstance(raw, bool):
        raise field_error(kind, "version", "must be an integer")
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise field_error(kind, "version", f"must be an integer (got {raw!r})") from None
    if not 1 <= version <= MAX_VERSION:
        raise field_error(kind, "version", "must be a positive integer")
    return version


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise field_error("query", name, f"must be an integer (got {raw!r})") from None
    if not low <= value <= high:
        raise field_error("query", name, f"must be between {low} and {high}")
    return value


from web.api import admin, objects, openapi  # noqa: E402, F401 - they register operations
