"""Exposed Services over the API, and the selector preview: which of them a selector matches."""

from __future__ import annotations

from flask import Response, abort, jsonify, request

from slb.model import Service
from web import queries
from web.api.common import PAGING, READ, ApiBlueprint, Param, field_error, paginate
from web.state import preview, service_row

bp = ApiBlueprint("api_services", __name__, tag="services")


@bp.operation(
    "/services", "GET", summary="Exposed Services with their ready endpoints",
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
    items, paging = paginate(rows)
    return jsonify({"revision": view.revision, **paging, "items": [r.as_json() for r in items]})


@bp.operation(
    "/services/<namespace>/<name>", "GET", summary="An exposed Service with its backends",
    role=READ, ok=(200, "ServiceItem"),
)  # fmt: skip
def get_service(namespace: str, name: str) -> Response:
    view = queries.current()
    stored = view.snapshot.of(Service).get(f"{namespace}/{name}")
    if stored is None:
        abort(404, description=f"no exposed Service {namespace}/{name}")
    return jsonify({**service_row(stored).as_json(), "service": queries.as_json(stored)})


@bp.operation(
    "/selector-preview", "GET",
    summary="Which exposed Services a selector matches, and their ready endpoints",
    role=READ, ok=(200, "Preview"), errors=(422,),
    query=(
        Param("selector", {"type": "string"}, "A label selector, e.g. app=cart,env in (prod)",
              required=True),
        Param("target_port", {"type": "string"}, "Count endpoints on this port (name or number)"),
        Param("load_balancer", {"type": "string"},
              "Only Services of the namespaces this instance admits (the rest are counted)"),
    ),
)  # fmt: skip
def selector_preview() -> Response:
    text = request.args.get("selector")
    if text is None:
        raise field_error("query", "selector", "required")
    target = request.args.get("target_port") or None
    port: int | str | None = int(target) if target and target.isdigit() else target
    balancer = request.args.get("load_balancer")
    return jsonify(preview(queries.current().snapshot, text, port, balancer).as_json())
