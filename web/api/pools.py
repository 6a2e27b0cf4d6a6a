"""VIP address pools over the API: list, create or replace by name, delete."""

from __future__ import annotations

from flask import Response, abort

from slb.model import AddressPool
from web.api.common import (
    READ,
    VERSION_QUERY,
    ApiBlueprint,
    items_json,
    put_named,
    take_version,
)
from web.auth import Role
from web.db import get_store, operations

bp = ApiBlueprint("api_pools", __name__, tag="instances")


@bp.operation(
    "/pools", "GET", summary="List address pools",
    role=READ, ok=(200, "AddressPoolList"),
)  # fmt: skip
def list_pools() -> Response:
    return items_json(AddressPool)


@bp.operation(
    "/pools/<name>", "PUT",
    summary="Create a pool, or replace it (with the version read)",
    role=Role.ADMIN, ok=(200, "AddressPoolItem"), body="AddressPoolPut", errors=(409,),
)  # fmt: skip
def put_pool(name: str) -> Response:
    return put_named(
        AddressPool, name, lambda data, version: operations().put_pool(data, expect=version)
    )


@bp.operation(
    "/pools/<name>", "DELETE", summary="Delete a pool (refused while instances use it)",
    role=Role.ADMIN, ok=(204, None), errors=(409, 422, 428), query=VERSION_QUERY,
)  # fmt: skip
def delete_pool(name: str) -> Response:
    version = take_version(AddressPool.kind)
    if get_store().get(AddressPool, name) is None:
        abort(404, description=f"no address pool named {name!r}")
    operations().remove_pool(name, expect=version)
    return Response(status=204)
