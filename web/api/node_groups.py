"""LB node groups over the API: list, and create or replace by name (admins)."""

from __future__ import annotations

from flask import Response, jsonify

from slb.model import NodeGroup
from web import queries
from web.api.common import (
    READ,
    ApiBlueprint,
    field_error,
    json_body,
    take_version,
    versioned_json,
    with_etag,
)
from web.auth import Role
from web.db import operations

bp = ApiBlueprint("api_node_groups", __name__, tag="instances")


@bp.operation(
    "/node-groups", "GET", summary="List LB node groups",
    role=READ, ok=(200, "NodeGroupList"),
)  # fmt: skip
def list_node_groups() -> Response:
    view = queries.current()
    return jsonify(
        {"items": [versioned_json(s) for _, s in sorted(view.snapshot.of(NodeGroup).items())]}
    )


@bp.operation(
    "/node-groups/<name>", "PUT",
    summary="Create a node group, or replace it (with the version read)",
    role=Role.ADMIN, ok=(200, "NodeGroupItem"), body="NodeGroupPut", errors=(409,),
)  # fmt: skip
def put_node_group(name: str) -> Response:
    data = json_body()
    version = take_version(NodeGroup.kind, data, required=False)
    if "name" in data and data["name"] != name:
        raise field_error(NodeGroup.kind, "name", "must match the path")
    stored = operations().put_node_group({**data, "name": name}, expect=version or 0)
    return with_etag({**stored.obj.model_dump(mode="json"), "version": stored.revision})
