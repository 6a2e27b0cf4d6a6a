"""The desired state's objects over the API: listeners, instances, pools, node groups,
Services, certificates, and the selector preview.

Writes go through `slb.operations` (validation, conflicts, audit); updates and deletes
need the version the client read, and a stale one gets 409.
"""

from __future__ import annotations

from typing import Any

from flask import Response, abort, jsonify, request

from slb.model import AddressPool, Certificate, Listener, LoadBalancer, NodeGroup, Service
from slb.storage.timeseries import SERIES, TimeSeries, bucketed
from web import queries
from web.api import Param, field_error, int_arg, json_body, operation, take_version
from web.auth import Role
from web.db import get_store, operations
from web.queries import PROTOCOLS, STATES, ListenerFilter
from web.state import listener_backends, preview, service_row

READ, WRITE = Role.VIEWER, Role.OPERATOR
PAGING = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size"),
    Param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Items to skip"),
)
SERVER_SET = ("owner", "created_at")


def _created(body: dict[str, Any], location: str) -> Response:
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = location
    response.headers["ETag"] = f'"{body["version"]}"'
    return response


def _with_etag(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.headers["ETag"] = f'"{body["version"]}"'
    return response


def _refuse_server_fields(kind: str, data: dict[str, Any]) -> None:
    for name in SERVER_SET:
        if name in data:
            raise field_error(kind, name, "set by the server, not by clients")


def _page(items: list[Any]) -> tuple[list[Any], dict[str, int]]:
    limit = int_arg("limit", 100, 1, 1000)
    offset = int_arg("offset", 0, 0, 10**9)
    return items[offset : offset + limit], {"total": len(items), "offset": offset, "limit": limit}


# -- listeners ------------------------------------------------------------------------------


@operation(
    "/listeners", "GET", summary="List listeners with their status", tag="listeners",
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
    items, page = _page(queries.listeners(view, which))
    return jsonify(
        {
            "revision": view.revision,
            **page,
            "items": [queries.listener_json(view, s) for s in items],
        }
    )


@operation(
    "/listeners", "POST", summary="Create a listener", tag="listeners",
    role=WRITE, ok=(201, "ListenerItem"), body="ListenerCreate", errors=(409,),
)  # fmt: skip
def create_listener() -> Response:
    data = json_body()
    _refuse_server_fields(Listener.kind, data)
    if "selector" in data:
        data["selector"] = queries.parse_selector(data["selector"])
    stored = operations().add_listener(data)
    view = queries.current()
    return _created(
        queries.listener_json(view, stored, nodes=True),
        f"/api/v1/listeners/{stored.obj.name}",
    )


def _listener(name: str) -> Any:
    view = queries.current()
    stored = view.snapshot.of(Listener).get(name)
    if stored is None:
        abort(404, description=f"no listener named {name!r}")
    return view, stored


@operation(
    "/listeners/<name>", "GET", summary="A listener with its status on every node",
    tag="listeners", role=READ, ok=(200, "ListenerItem"),
)  # fmt: skip
def get_listener(name: str) -> Response:
    view, stored = _listener(name)
    return _with_etag(queries.listener_json(view, stored, nodes=True))


@operation(
    "/listeners/<name>", "PATCH",
    summary="Change fields of a listener (needs the version read)", tag="listeners",
    role=WRITE, ok=(200, "ListenerItem"), body="ListenerPatch", errors=(409, 428),
)  # fmt: skip
def patch_listener(name: str) -> Response:
    data = json_body()
    version = take_version(Listener.kind, data)
    _refuse_server_fields(Listener.kind, data)
    if "name" in data and data["name"] != name:
        raise field_error(Listener.kind, "name", "cannot be changed; create a new listener")
    if "selector" in data:
        data["selector"] = queries.parse_selector(data["selector"])
    _listener(name)
    stored = operations().update_listener(name, data, expect=version)
    return _with_etag(queries.listener_json(queries.current(), stored, nodes=True))


@operation(
    "/listeners/<name>", "DELETE", summary="Delete a listener (needs the version read)",
    tag="listeners", role=WRITE, ok=(204, None), errors=(409, 422, 428),
    query=(Param("version", {"type": "integer", "minimum": 1}, "The version read"),),
)  # fmt: skip
def delete_listener(name: str) -> Response:
    version = take_version(Listener.kind)
    _listener(name)
    operations().remove_listener(name, expect=version)
    return Response(status=204)


@operation(
    "/listeners/<name>/backends", "GET", summary="Every endpoint a listener selects, with health",
    tag="listeners", role=READ, ok=(200, "BackendList"),
)  # fmt: skip
def listener_backends_api(name: str) -> Response:
    view, stored = _listener(name)
    rows = listener_backends(view.snapshot, stored.obj)
    return jsonify(
        {
            "items": [
                {**b.model_dump(mode="json"), "service": key, "health": health}
                for key, b, health in rows
            ]
        }
    )


@operation(
    "/listeners/<name>/metrics", "GET",
    summary="Connections, requests and bytes per second over time, summed over nodes",
    tag="listeners", role=READ, ok=(200, "Metrics"), errors=(422,),
    query=(
        Param("window", {"type": "integer", "minimum": 60, "maximum": 3600, "default": 900},
              "Seconds of history"),
        Param("step", {"type": "integer", "minimum": 1, "maximum": 600, "default": 10},
              "Seconds per point"),
    ),
)  # fmt: skip
def listener_metrics(name: str) -> Response:
    _listener(name)
    window = int_arg("window", 900, 60, 3600)
    step = int_arg("step", 10, 1, 600)
    import time  # noqa: PLC0415

    until = time.time()
    since = until - window
    ts = TimeSeries(get_store())
    out = {}
    for series in SERIES:
        found = ts.range(series, since, until, match={"listener": name})
        out[series] = [{"t": t, "value": v} for t, v in bucketed(found, since, until, step)]
    return jsonify({"listener": name, "since": since, "until": until, "step": step, "series": out})


# -- instances, pools, node groups -----------------------------------------------------------


@operation(
    "/load-balancers", "GET", summary="List LB instances", tag="instances",
    role=READ, ok=(200, "LoadBalancerList"), errors=(422,), query=PAGING,
)  # fmt: skip
def list_load_balancers() -> Response:
    view = queries.current()
    items, page = _page([s for _, s in sorted(view.snapshot.of(LoadBalancer).items())])
    return jsonify(
        {"revision": view.revision, **page,
         "items": [queries.load_balancer_json(view, s) for s in items]}
    )  # fmt: skip


@operation(
    "/load-balancers", "POST", summary="Create an LB instance", tag="instances",
    role=WRITE, ok=(201, "LoadBalancerItem"), body="LoadBalancerCreate", errors=(409,),
)  # fmt: skip
def create_load_balancer() -> Response:
    data = json_body()
    _refuse_server_fields(LoadBalancer.kind, data)
    stored = operations().add_load_balancer(data)
    return _created(
        queries.load_balancer_json(queries.current(), stored),
        f"/api/v1/load-balancers/{stored.obj.name}",
    )


@operation(
    "/load-balancers/<name>", "GET",
    summary="An LB instance with its listeners and the Services exposed on it",
    tag="instances", role=READ, ok=(200, "LoadBalancerItem"),
)  # fmt: skip
def get_load_balancer(name: str) -> Response:
    view = queries.current()
    stored = view.snapshot.of(LoadBalancer).get(name)
    if stored is None:
        abort(404, description=f"no load balancer named {name!r}")
    return _with_etag(queries.load_balancer_json(view, stored))


@operation(
    "/load-balancers/<name>", "DELETE",
    summary="Delete an LB instance (refused while it has listeners)", tag="instances",
    role=WRITE, ok=(204, None), errors=(409, 422, 428),
    query=(Param("version", {"type": "integer", "minimum": 1}, "The version read"),),
)  # fmt: skip
def delete_load_balancer(name: str) -> Response:
    version = take_version(LoadBalancer.kind)
    if get_store().get(LoadBalancer, name) is None:
        abort(404, description=f"no load balancer named {name!r}")
    operations().remove_load_balancer(name, expect=version)
    return Response(status=204)


def _versioned_json(stored: Any) -> dict[str, Any]:
    return {**queries.as_json(stored), "version": stored.revision}


@operation(
    "/pools", "GET", summary="List address pools", tag="instances",
    role=READ, ok=(200, "AddressPoolList"),
)  # fmt: skip
def list_pools() -> Response:
    view = queries.current()
    return jsonify(
        {"items": [_versioned_json(s) for _, s in sorted(view.snapshot.of(AddressPool).items())]}
    )


@operation(
    "/pools/<name>", "PUT",
    summary="Create a pool, or replace it (with the version read)", tag="instances",
    role=WRITE, ok=(200, "AddressPoolItem"), body="AddressPoolPut", errors=(409,),
)  # fmt: skip
def put_pool(name: str) -> Response:
    data = json_body()
    version = take_version(AddressPool.kind, data, required=False)
    if "name" in data and data["name"] != name:
        raise field_error(AddressPool.kind, "name", "must match the path")
    stored = operations().put_pool({**data, "name": name}, expect=version or 0)
    return _with_etag({**stored.obj.model_dump(mode="json"), "version": stored.revision})


@operation(
    "/pools/<name>", "DELETE", summary="Delete a pool (refused while instances use it)",
    tag="instances", role=WRITE, ok=(204, None), errors=(409, 422, 428),
    query=(Param("version", {"type": "integer", "minimum": 1}, "The version read"),),
)  # fmt: skip
def delete_pool(name: str) -> Response:
    version = take_version(AddressPool.kind)
    if get_store().get(AddressPool, name) is None:
        abort(404, description=f"no address pool named {name!r}")
    operations().remove_pool(name, expect=version)
    return Response(status=204)


@operation(
    "/node-groups", "GET", summary="List LB node groups", tag="instances",
    role=READ, ok=(200, "NodeGroupList"),
)  # fmt: skip
def list_node_groups() -> Response:
    view = queries.current()
    return jsonify(
        {"items": [_versioned_json(s) for _, s in sorted(view.snapshot.of(NodeGroup).items())]}
    )


@operation(
    "/node-groups/<name>", "PUT",
    summary="Create a node group, or replace it (with the version read)", tag="instances",
    role=Role.ADMIN, ok=(200, "NodeGroupItem"), body="NodeGroupPut", errors=(409,),
)  # fmt: skip
def put_node_group(name: str) -> Response:
    data = json_body()
    version = take_version(NodeGroup.kind, data, required=False)
    if "name" in data and data["name"] != name:
        raise field_error(NodeGroup.kind, "name", "must match the path")
    stored = operations().put_node_group({**data, "name": name}, expect=version or 0)
    return _with_etag({**stored.obj.model_dump(mode="json"), "version": stored.revision})


# -- Services and the selector preview ---------------------------------------------------------


@operation(
    "/services", "GET", summary="Exposed Services with their ready endpoints", tag="services",
    role=READ, ok=(200, "ServiceList"), errors=(422,),
    query=(Param("selector", {"type": "string"}, "Only those a label selector matches"),
           *PAGING),
)  # fmt: skip
def list_services() -> Response:
    view = queries.current()
    text = request.args.get("selector", "")
    if text.strip():
        found = preview(view.snapshot, text)
        if found.error:
            raise field_error("query", "selector", found.error)
        rows = list(found.services)
    else:
        rows = [service_row(s) for _, s in sorted(view.snapshot.of(Service).items())]
    items, page = _page(rows)
    return jsonify({"revision": view.revision, **page, "items": [r.as_json() for r in items]})


@operation(
    "/services/<namespace>/<name>", "GET", summary="An exposed Service with its backends",
    tag="services", role=READ, ok=(200, "ServiceItem"),
)  # fmt: skip
def get_service(namespace: str, name: str) -> Response:
    view = queries.current()
    stored = view.snapshot.of(Service).get(f"{namespace}/{name}")
    if stored is None:
        abort(404, description=f"no exposed Service {namespace}/{name}")
    return jsonify({**service_row(stored).as_json(), "service": queries.as_json(stored)})


@operation(
    "/selector-preview", "GET",
    summary="Which exposed Services a selector matches, and their ready endpoints",
    tag="services", role=READ, ok=(200, "Preview"), errors=(422,),
    query=(
        Param("selector", {"type": "string"}, "A label selector, e.g. app=cart,env in (prod)",
              required=True),
        Param("target_port", {"type": "string"}, "Count endpoints on this port (name or number)"),
    ),
)  # fmt: skip
def selector_preview() -> Response:
    text = request.args.get("selector")
    if text is None:
        raise field_error("query", "selector", "required")
    target = request.args.get("target_port") or None
    port: int | str | None = int(target) if target and target.isdigit() else target
    return jsonify(preview(queries.current().snapshot, text, port).as_json())


# -- certificates ------------------------------------------------------------------------------


@operation(
    "/certificates", "GET", summary="Certificates with subject, SANs and days left",
    tag="certificates", role=READ, ok=(200, "CertificateList"),
)  # fmt: skip
def list_certificates() -> Response:
    view = queries.current()
    return jsonify(
        {
            "items": [
                queries.certificate_json(s)
                for _, s in sorted(view.snapshot.of(Certificate).items())
            ]
        }
    )


@operation(
    "/certificates", "POST",
    summary="Upload a certificate chain and its private key (the key is never returned)",
    tag="certificates", role=WRITE, ok=(201, "CertificateItem"), body="CertificateCreate",
    errors=(409,),
)  # fmt: skip
def create_certificate() -> Response:
    data = json_body()
    name, chain_pem, key_pem = _certificate_fields(data, name_required=True)
    stored, info = operations().put_certificate(name, chain_pem, key_pem, expect=0)
    return _created(queries.certificate_json(stored, info), f"/api/v1/certificates/{name}")


def _certificate_fields(data: dict[str, Any], name_required: bool) -> tuple[str, str, str]:
    allowed = {"name", "chain_pem", "key_pem"}
    for extra in sorted(set(data) - allowed):
        raise field_error(Certificate.kind, extra, "unknown field")
    values = []
    for field in ("name", "chain_pem", "key_pem"):
        value = data.get(field, "")
        if field == "name" and not name_required:
            values.append(value)
            continue
        if not isinstance(value, str) or not value:
            raise field_error(Certificate.kind, field, "required: a non-empty string")
        values.append(value)
    return values[0], values[1], values[2]


@operation(
    "/certificates/<name>", "GET", summary="A certificate (never its key)",
    tag="certificates", role=READ, ok=(200, "CertificateItem"),
)  # fmt: skip
def get_certificate(name: str) -> Response:
    stored = queries.current().snapshot.of(Certificate).get(name)
    if stored is None:
        abort(404, description=f"no certificate named {name!r}")
    return _with_etag(queries.certificate_json(stored))


@operation(
    "/certificates/<name>", "PUT",
    summary="Rotate a certificate: a new chain and key (needs the version read)",
    tag="certificates", role=WRITE, ok=(200, "CertificateItem"), body="CertificateRotate",
    errors=(409, 428),
)  # fmt: skip
def rotate_certificate(name: str) -> Response:
    data = json_body()
    version = take_version(Certificate.kind, data)
    if get_store().get(Certificate, name) is None:
        abort(404, description=f"no certificate named {name!r}")
    data.pop("name", None)
    _, chain_pem, key_pem = _certificate_fields(data, name_required=False)
    stored, info = operations().put_certificate(name, chain_pem, key_pem, expect=version)
    return _with_etag(queries.certificate_json(stored, info))


@operation(
    "/certificates/<name>", "DELETE",
    summary="Delete a certificate (refused while listeners use it)", tag="certificates",
    role=WRITE, ok=(204, None), errors=(409, 422, 428),
    query=(Param("version", {"type": "integer", "minimum": 1}, "The version read"),),
)  # fmt: skip
def delete_certificate(name: str) -> Response:
    version = take_version(Certificate.kind)
    if get_store().get(Certificate, name) is None:
        abort(404, description=f"no certificate named {name!r}")
    operations().remove_certificate(name, expect=version)
    return Response(status=204)
