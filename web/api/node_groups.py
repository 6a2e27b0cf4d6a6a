"""LB node groups over the API: list, and create or replace by name (admins)."""

from __future__ import annotations

from flask import Response

from slb.model import NodeGroup
from web.api.common import (
    READ,
    ApiBlueprint,
    items_json,
    put_named,
)
from web.auth import Role
from web.db import operations

bp = ApiBlueprint("api_node_groups", __name__, tag="instances")


@bp.operation(
    "/node-groups", "GET", summary="List LB node groups",
    role=READ, ok=(200, "NodeGroupList"),
)  # fmt: skip
def list_node_groups() -> Response:
    return items_json(NodeGroup)


@bp.operation(
    "/node-groups/<name>", "PUT",
    summary="Create a node group, or replace it (with the version read)",
    role=Role.ADMIN, ok=(200, "NodeGroupItem"), body="NodeGroupPut", errors=(409,),
)  # fmt: skip
def put_node_group(name: str) -> Response:
    return put_named(
        NodeGroup, name, lambda data, version: operations().put_node_group(data, expect=version)
    )
