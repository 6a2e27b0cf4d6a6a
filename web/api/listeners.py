"""Listeners over the API: list and filter, create, change, delete; backends and metrics.

Writes go through `slb.operations` (validation, conflicts, audit); updates and deletes
need the version the client read, and a stale one gets 409.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response, abort, jsonify, request

from slb.model import Listener
from slb.snapshot import Stored
from web import queries
from web.api.common import (
    PAGING,
    READ,
    VERSION_QUERY,
    WRITE,
    ApiBlueprint,
    Param,
    created,
    field_error,
    int_arg,
    json_body,
    paginate,
    refuse_server_fields,
    take_version,
    with_etag,
)
from web.db import operations
from web.queries import PROTOCOLS, STATES, ListenerFilter
from web.state import listener_backends

bp = ApiBlueprint("api_listeners", __name__, tag="listeners")


@bp.operation(
    "/listeners", "GET", summary="List listeners with their status",
    role=READ, ok=(200, "ListenerList"), errors=(422,),
    query=(
        Param("q", {"type": "string"}, "Part of the name"),
        Param("load_balancer", {"type": "string"}, "Only this instance's"),
        Param("protocol", {"type": "string", "enum": list(PROTOCOLS)}, "Only this protocol"),
        Param("owner", {"type": "string", "enum": ["Operator", "Service"]}, "Who made them"),
        Param("state", {"type": "string", "enum": list(STATES)}, "Only in this state"),
        *PAGING,
    ),
)  # fmt: skip
def list_listeners() -> Response:
    view = queries.current()
    which = ListenerFilter(
        q=request.args.get("q", ""),
        load_balancer=request.args.get("load_balancer", ""),
        protocol=request.args.get("protocol", ""),
        owner=request.args.get("owner", ""),
        state=request.args.get("state", ""),
    )
    items, paging = paginate(queries.listeners(view, which))
    return jsonify(
        {
            "revision": view.revision,
            **paging,
            "items": [queries.listener_json(view, s) for s in items],
        }
    )


@bp.operation(
    "/listeners", "POST", summary="Create a listener",
    role=WRITE, ok=(201, "ListenerItem"), body="ListenerCreate", errors=(409,),
)  # fmt: skip
def create_listener() -> Response:
    data = json_body()
    refuse_server_fields(Listener.kind, data)
    if "selector" in data:
        data["selector"] = queries.parse_selector(data["selector"])
    stored = operations().add_listener(data)
    view = queries.current()
    return created(
        queries.listener_json(view, stored, nodes=True),
        f"/api/v1/listeners/{stored.obj.name}",
    )


def _listener(name: str) -> Any:
    view = queries.current()
    stored = view.snapshot.of(Listener).get(name)
    if stored is None:
        abort(404, description=f"no listener named {name!r}")
    return view, stored


@bp.operation(
    "/listeners/<name>", "GET", summary="A listener with its status on every node",
    role=READ, ok=(200, "ListenerItem"),
)  # fmt: skip
def get_listener(name: str) -> Response:
    view, stored = _listener(name)
    return with_etag(queries.listener_json(view, stored, nodes=True))


@bp.operation(
    "/listeners/<name>", "PATCH",
    summary="Change fields of a listener (needs the version read)",
    role=WRITE, ok=(200, "ListenerItem"), body="ListenerPatch", errors=(409, 428),
)  # fmt: skip
def patch_listener(name: str) -> Response:
    data = json_body()
    version = take_version(Listener.kind, data)
    refuse_server_fields(Listener.kind, data)
    if "name" in data and data["name"] != name:
        raise field_error(Listener.kind, "name", "cannot be changed; create a new listener")
    if "selector" in data:
        data["selector"] = queries.parse_selector(data["selector"])
    _listener(name)
    stored = operations().update_listener(name, data, expect=version)
    return _written(stored)


@bp.operation(
    "/listeners/<name>", "DELETE", summary="Delete a listener (needs the version read)",
    role=WRITE, ok=(204, None), errors=(409, 422, 428), query=VERSION_QUERY,
)  # fmt: skip
def delete_listener(name: str) -> Response:
    version = take_version(Listener.kind)
    _listener(name)
    operations().remove_listener(name, expect=version)
    return Response(status=204)


@bp.operation(
    "/listeners/<name>/rules/<rule>", "PUT",
    summary="Add a forwarding rule, or replace the rule of that name where it stands "
    "(needs the listener's version read); `position` 0 puts it first",
    role=WRITE, ok=(200, "ListenerItem"), body="RulePut", errors=(409, 428),
)  # fmt: skip
def put_rule(name: str, rule: str) -> Response:
    data = json_body()
    version = take_version(Listener.kind, data)
    position = _position(data)
    if data.setdefault("name", rule) != rule:
        raise field_error(Listener.kind, "routes.name", "must be the rule's name in the path")
    _listener(name)
    stored = operations().put_rule(name, data, position, expect=version)
    return _written(stored)


@bp.operation(
    "/listeners/<name>/rules/<rule>/position", "PUT",
    summary="Move a forwarding rule to `position` (0: first; needs the version read)",
    role=WRITE, ok=(200, "ListenerItem"), body="RuleMove", errors=(409, 428),
)  # fmt: skip
def move_rule(name: str, rule: str) -> Response:
    data = json_body()
    version = take_version(Listener.kind, data)
    position = _position(data)
    if position is None:
        raise field_error(Listener.kind, "position", "required")
    _listener(name)
    stored = operations().move_rule(name, rule, position, expect=version)
    return _written(stored)


@bp.operation(
    "/listeners/<name>/rules/<rule>", "DELETE",
    summary="Remove a forwarding rule (needs the listener's version read)",
    role=WRITE, ok=(200, "ListenerItem"), errors=(409, 422, 428), query=VERSION_QUERY,
)  # fmt: skip
def delete_rule(name: str, rule: str) -> Response:
    version = take_version(Listener.kind)
    _listener(name)
    stored = operations().remove_rule(name, rule, expect=version)
    return _written(stored)


def _written(stored: Stored[Listener]) -> Response:
    """A listener as a write left it, read back with the state around it and its version."""
    return with_etag(queries.listener_json(queries.current(), stored, nodes=True))


def _position(data: dict[str, Any]) -> int | None:
    position = data.pop("position", None)
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
        raise field_error(Listener.kind, "position", f"must be an integer (got {position!r})")
    return position


@bp.operation(
    "/listeners/<name>/backends", "GET", summary="Every endpoint a listener selects, with health",
    role=READ, ok=(200, "BackendList"),
)  # fmt: skip
def listener_backends_api(name: str) -> Response:
    view, stored = _listener(name)
    rows = listener_backends(view.snapshot, stored.obj)
    envoys = queries.envoy_hosts(view, name) if stored.obj.protocol.is_l7 else {}
    return jsonify(
        {
            "items": [
                {**b.model_dump(mode="json"), "service": key, "health": health,
                 "envoy": envoys.get(f"{b.address}:{b.port}", {})}
                for key, b, health in rows
            ]
        }
    )  # fmt: skip


@bp.operation(
    "/listeners/<name>/metrics", "GET",
    summary="Connections, requests, responses by class, bytes and upstream latency over time, "
            "summed over nodes (latency: the worst node); per backend too (L7)",
    role=READ, ok=(200, "Metrics"), errors=(422,),
    query=(
        Param("window", {"type": "integer", "minimum": 60, "maximum": 3600, "default": 900},
              "Seconds of history"),
        Param("step", {"type": "integer", "minimum": 1, "maximum": 600, "default": 10},
              "Seconds per point"),
    ),
)  # fmt: skip
def listener_metrics(name: str) -> Response:
    view, stored = _listener(name)
    window = int_arg("window", 900, 60, 3600)
    step = int_arg("step", 10, 1, 600)
    until = time.time()
    since = until - window
    backends = [b for _, b, _ in listener_backends(view.snapshot, stored.obj)]
    traffic = queries.listener_traffic(stored.obj, backends, since, until, step)
    return jsonify({"listener": name, "since": since, "until": until, "step": step, **traffic})
