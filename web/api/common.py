"""What every API module shares: the blueprint that documents its routes, and the
request and response conventions (JSON bodies, versions, paging, ETags).

Each view is registered with `bp.operation(...)`, which adds the Flask route, applies the
role check and records what the OpenAPI document says about it (body, responses, query
parameters), so the document is generated from the same table that routes requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest, PreconditionRequired

from slb.model import FieldError, ModelError, StoredObject
from slb.snapshot import Stored
from web import queries
from web.auth import Role, require

PREFIX = "/api/v1"
MAX_VERSION = 2**53 - 1
READ, WRITE = Role.VIEWER, Role.OPERATOR
"""Who may read the desired state, and who may change it."""
_RULE_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


PAGING = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size"),
    Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Items to skip"),
)
VERSION_QUERY = (Param("version", {"type": "integer", "minimum": 1}, "The version read"),)
"""How a DELETE, which has no body, says which version it read."""
SERVER_SET = ("owner", "created_at")


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
        return _RULE_PARAM.sub(r"{\1}", self.rule)

    @property
    def path_params(self) -> list[str]:
        return _RULE_PARAM.findall(self.rule)


class ApiBlueprint(Blueprint):
    """One noun's routes under /api/v1, each also described for the OpenAPI document.

    The document is built from the blueprints the app registers, so a route and its
    description cannot be registered one without the other.
    """

    def __init__(self, name: str, import_name: str, *, tag: str) -> None:
        super().__init__(name, import_name, url_prefix=PREFIX)
        self.tag = tag
        self.operations: list[Operation] = []

    def operation(
        self,
        rule: str,
        method: str,
        *,
        summary: str,
        role: Role,
        ok: tuple[int, str | None],
        body: str | None = None,
        errors: Sequence[int] = (),
        query: Sequence[Param] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Route `method rule` to the view, for `role` and up, and describe it in the document."""

        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            guarded = require(role)(view)
            self.add_url_rule(rule, view.__name__, guarded, methods=[method])
            responses: dict[int, str | None] = {ok[0]: ok[1], 401: "Errors", 403: "Errors"}
            if body is not None:
                responses.update({400: "Errors", 413: "Errors", 422: "Errors"})
            if "<" in rule:
                responses[404] = "Errors"
            for code in errors:
                responses[code] = "Errors"
            self.operations.append(
                Operation(
                    rule=rule,
                    method=method,
                    endpoint=view.__name__,
                    summary=summary,
                    tag=self.tag,
                    role=role,
                    body=body,
                    responses=responses,
                    query=tuple(query),
                )
            )
            return guarded

        return decorator


# -- requests -------------------------------------------------------------------------------


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


def refuse_server_fields(kind: str, data: dict[str, Any]) -> None:
    for name in SERVER_SET:
        if name in data:
            raise field_error(kind, name, "set by the server, not by clients")


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


def paginate(items: list[Any]) -> tuple[list[Any], dict[str, int]]:
    """The slice `limit` and `offset` ask for, and the envelope fields that describe it."""
    limit = int_arg("limit", 100, 1, 1000)
    offset = int_arg("offset", 0, 0, 10**9)
    return items[offset : offset + limit], {"total": len(items), "offset": offset, "limit": limit}


# -- responses ------------------------------------------------------------------------------


def created(body: dict[str, Any], location: str) -> Response:
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = location
    response.headers["ETag"] = f'"{body["version"]}"'
    return response


def with_etag(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.headers["ETag"] = f'"{body["version"]}"'
    return response


def versioned_json(stored: Any) -> dict[str, Any]:
    return {**queries.as_json(stored), "version": stored.revision}


def items_json(cls: type[StoredObject]) -> Response:
    """Every object of `cls` in the current view, by name, each with its version."""
    view = queries.current()
    return jsonify({"items": [versioned_json(s) for _, s in sorted(view.snapshot.of(cls).items())]})


def put_named(
    cls: type[StoredObject],
    name: str,
    put: Callable[[dict[str, Any], int], Stored[Any]],
) -> Response:
    """PUT of a whole object by name: the body's `name`, if any, must match the path; with a
    version it replaces that version, without one it must not exist yet."""
    data = json_body()
    version = take_version(cls.kind, data, required=False)
    if "name" in data and data["name"] != name:
        raise field_error(cls.kind, "name", "must match the path")
    stored = put({**data, "name": name}, version or 0)
    return with_etag({**stored.obj.model_dump(mode="json"), "version": stored.revision})
