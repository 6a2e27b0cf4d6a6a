"""LB instances (load balancers) over the API: list, create, read, delete."""

from __future__ import annotations

from flask import Response, abort, jsonify

from slb.model import LoadBalancer
from web import queries
from web.api.common import (
    PAGING,
    READ,
    VERSION_QUERY,
    WRITE,
    ApiBlueprint,
    created,
    json_body,
    paginate,
    refuse_server_fields,
    take_version,
    with_etag,
)
from web.db import get_store, operations

bp = ApiBlueprint("api_instances", __name__, tag="instances")


@bp.operation(
    "/load-balancers", "GET", summary="List LB instances",
    role=READ, ok=(200, "LoadBalancerList"), errors=(422,), query=PAGING,
)  # fmt: skip
def list_load_balancers() -> Response:
    view = queries.current()
    items, paging = paginate([s for _, s in sorted(view.snapshot.of(LoadBalancer).items())])
    return jsonify(
        {"revision": view.revision, **paging,
         "items": [queries.load_balancer_json(view, s) for s in items]}
    )  # fmt: skip


@bp.operation(
    "/load-balancers", "POST", summary="Create an LB instance",
    role=WRITE, ok=(201, "LoadBalancerItem"), body="LoadBalancerCreate", errors=(409,),
)  # fmt: skip
def create_load_balancer() -> Response:
    data = json_body()
    refuse_server_fields(LoadBalancer.kind, data)
    stored = operations().add_load_balancer(data)
    return created(
        queries.load_balancer_json(queries.current(), stored),
        f"/api/v1/load-balancers/{stored.obj.name}",
    )


@bp.operation(
    "/load-balancers/<name>", "GET",
    summary="An LB instance with its listeners and the Services exposed on it",
    role=READ, ok=(200, "LoadBalancerItem"),
)  # fmt: skip
def get_load_balancer(name: str) -> Response:
    view = queries.current()
    stored = view.snapshot.of(LoadBalancer).get(name)
    if stored is None:
        abort(404, description=f"no load balancer named {name!r}")
    return with_etag(queries.load_balancer_json(view, stored))


@bp.operation(
    "/load-balancers/<name>", "DELETE",
    summary="Delete an LB instance (refused while it has listeners)",
    role=WRITE, ok=(204, None), errors=(409, 422, 428), query=VERSION_QUERY,
)  # fmt: skip
def delete_load_balancer(name: str) -> Response:
    version = take_version(LoadBalancer.kind)
    if get_store().get(LoadBalancer, name) is None:
        abort(404, description=f"no load balancer named {name!r}")
    operations().remove_load_balancer(name, expect=version)
    return Response(status=204)
