"""The OpenAPI 3.1 document, built from the model's JSON schemas and the route table.

Objects of the desired state are described by the pydantic models themselves (response
schemas in serialization mode, request bodies in validation mode, suffixed `_In`), so the
document cannot drift from what the API validates; the API's own envelopes (lists,
status, errors) are written out here. The operations are those of the API blueprints the
app registered, so the document lists exactly the routes the app serves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from slb.model import (
    AddressPool,
    Backend,
    Listener,
    LoadBalancer,
    NodeGroup,
    Service,
)
from slb.selector import LabelSelector
from slb.storage.envoyhosts import STATES
from slb.storage.timeseries import BACKEND_SERIES, SERIES
from web.api.common import PREFIX, ApiBlueprint, Operation
from web.auth import MAX_TOKEN_DAYS, Role, require

bp = Blueprint("api_openapi", __name__, url_prefix=PREFIX)

_MODELS: tuple[type[BaseModel], ...] = (
    Listener, LoadBalancer, AddressPool, NodeGroup, Service, Backend, LabelSelector,
)  # fmt: skip
REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _model_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, suffix in (("serialization", ""), ("validation", "_In")):
        _, defs = models_json_schema(
            [(m, mode) for m in _MODELS],  # type: ignore[misc]
            ref_template=REF + "{model}" + suffix,
        )
        for name, schema in defs.get("$defs", {}).items():
            out[name + suffix] = schema
    return out


def _without(schema: dict[str, Any], *fields: str) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for name in fields:
        schema["properties"].pop(name, None)
    schema["required"] = [r for r in schema.get("required", []) if r not in fields]
    return schema


def _extended(schema: dict[str, Any], required: bool = True, **props: Any) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    schema["properties"].update(props)
    if required:
        schema["required"] = [*schema.get("required", []), *props]
    return schema


def _list_of(item: dict[str, Any], paged: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"items": {"type": "array", "items": item}}
    if paged:
        props.update(
            revision={"type": "integer"}, total={"type": "integer"},
            offset={"type": "integer"}, limit={"type": "integer"},
        )  # fmt: skip
    return {"type": "object", "properties": props, "required": list(props)}


def _obj(required: bool = True, **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required else []}


STRING, INTEGER, NUMBER, BOOLEAN = (
    {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
)  # fmt: skip
NULLABLE_STRING = {"type": ["string", "null"]}
VERSION_IN = {"type": "integer", "minimum": 1, "description": "The version read (revision)"}
STATE = {"type": "string", "enum": ["served", "pending", "error"]}


def _schemas() -> dict[str, Any]:  # noqa: PLR0915 - one line per schema
    models = _model_schemas()
    s: dict[str, Any] = dict(models)
    s["Errors"] = _obj(errors={"type": "array", "items": _obj(field=STRING, message=STRING)})
    s["NodeState"] = _obj(
        tier=STRING, node=STRING, group=STRING, state=STATE, revision=INTEGER, detail=STRING
    )
    status = _obj(state=STATE, reason=STRING, needed_revision=INTEGER)
    status["properties"]["nodes"] = {"type": "array", "items": _ref("NodeState")}
    s["ListenerStatus"] = status
    s["ListenerItem"] = _extended(
        models["Listener"], version=INTEGER, status=_ref("ListenerStatus")
    )
    s["ListenerList"] = _list_of(_ref("ListenerItem"), paged=True)
    selector_in = {
        "anyOf": [STRING, _ref("LabelSelector_In"), {"type": "null"}],
        "description": "A LabelSelector, or its kubectl -l form: app=cart,env in (prod)",
    }
    create = _without(models["Listener_In"], "owner", "created_at")
    create["properties"]["selector"] = selector_in
    s["ListenerCreate"] = create
    patch = _extended(create, required=False, version=VERSION_IN)
    patch["required"] = []
    s["ListenerPatch"] = patch
    position = {"type": "integer", "minimum": 0, "description": "0: first, tried before all"}
    rule = _extended(models["Route_In"], required=False, version=VERSION_IN, position=position)
    rule["required"] = ["version"]
    rule["properties"]["name"]["description"] = "Optional: the name in the path"
    s["RulePut"] = rule
    s["RuleMove"] = _obj(version=VERSION_IN, position=position)
    s["BackendList"] = _list_of(
        _extended(models["Backend"], service=STRING,
                  health={"type": "string", "enum": ["ready", "draining", "not ready"]},
                  envoy={"type": "object", "description": "Envoy node -> health there (L7)",
                         "additionalProperties": {"type": "string", "enum": list(STATES)}})
    )  # fmt: skip
    point = _obj(t=NUMBER, value=NUMBER)
    series = {"type": "array", "items": point}
    of_backend = {"type": "object", "properties": dict.fromkeys(BACKEND_SERIES, series)}
    s["Metrics"] = _obj(
        listener=STRING, since=NUMBER, until=NUMBER, step=INTEGER,
        series={"type": "object", "properties": dict.fromkeys(SERIES, series),
                "required": list(SERIES)},
        backends={"type": "object", "additionalProperties": of_backend,
                  "description": "ADDRESS:PORT -> its series (L7 listeners)"},
    )  # fmt: skip
    names = {"type": "array", "items": STRING}
    s["LoadBalancerItem"] = _extended(
        models["LoadBalancer"], version=INTEGER, listeners=names, services=names
    )
    s["LoadBalancerList"] = _list_of(_ref("LoadBalancerItem"), paged=True)
    s["LoadBalancerCreate"] = _without(models["LoadBalancer_In"], "owner")
    for kind in ("AddressPool", "NodeGroup"):
        s[f"{kind}Item"] = _extended(models[kind], version=INTEGER)
        s[f"{kind}List"] = _list_of(_ref(f"{kind}Item"))
        put = _extended(_without(models[f"{kind}_In"], "name"), required=False, version=VERSION_IN)
        put["properties"]["name"] = STRING
        s[f"{kind}Put"] = put
    row = _obj(
        key=STRING, namespace=STRING, name=STRING,
        labels={"type": "object", "additionalProperties": STRING},
        load_balancer=STRING, ports=names, ready_endpoints=INTEGER, endpoints=INTEGER,
        version=INTEGER,
    )  # fmt: skip
    s["ServiceRow"] = row
    s["ServiceList"] = _list_of(_ref("ServiceRow"), paged=True)
    s["ServiceItem"] = _extended(row, service=_ref("Service"))
    s["Preview"] = _obj(
        selector=STRING, error=NULLABLE_STRING,
        services={"type": "array", "items": _ref("ServiceRow")}, ready_endpoints=INTEGER,
        outside_namespaces=INTEGER,
    )  # fmt: skip
    # Certificates admit namespaces by the same field type (NamespaceSelector) as instances.
    namespace_selector = models["LoadBalancer"]["properties"]["allowed_namespace_selector"]
    namespace_selector_in = models["LoadBalancer_In"]["properties"]["allowed_namespace_selector"]
    s["CertificateItem"] = _obj(
        name=STRING, key_ref=STRING, chain_pem=STRING, namespace=NULLABLE_STRING,
        allowed_namespaces={"type": "array", "items": STRING},
        allowed_namespace_selector=namespace_selector,
        owner={"anyOf": [models["LoadBalancer"]["properties"]["owner"], {"type": "null"}]},
        version=INTEGER, subject=STRING, issuer=STRING, sans=names, serial=STRING,
        not_before=STRING, not_after=STRING,
        days_left=INTEGER, expires_soon=BOOLEAN, chain_length=INTEGER,
        fingerprint_sha256=STRING,
    )  # fmt: skip
    s["CertificateList"] = _list_of(_ref("CertificateItem"))
    pem = {"type": "string", "minLength": 1}
    tenants = {"type": "array", "items": STRING}
    s["CertificateCreate"] = _obj(
        required=False, name=STRING, chain_pem=pem, key_pem=pem,
        namespace=NULLABLE_STRING, allowed_namespaces=tenants,
        allowed_namespace_selector=namespace_selector_in,
    )  # fmt: skip
    s["CertificateCreate"]["required"] = ["name", "chain_pem", "key_pem"]
    s["CertificateRotate"] = _obj(required=False, chain_pem=pem, key_pem=pem, version=VERSION_IN)
    s["CertificateRotate"]["required"] = ["chain_pem", "key_pem"]
    report = _obj(
        tier=STRING, node=STRING, group=STRING, revision=INTEGER, updated_at=NUMBER,
        error=NULLABLE_STRING, error_revision={"type": ["integer", "null"]},
    )  # fmt: skip
    s["Status"] = _obj(
        revision=INTEGER,
        listeners=_obj(served=INTEGER, pending=INTEGER, error=INTEGER),
        nodes={"type": "array", "items": report},
    )
    anything = {"type": ["object", "null"]}
    s["AuditList"] = _list_of(
        _obj(id=STRING, at=NUMBER, who=STRING, action=STRING, kind=STRING, key=STRING,
             revision=INTEGER, before=anything, after=anything)
    )  # fmt: skip
    role = {"type": "string", "enum": [r.label for r in Role]}
    s["Me"] = _obj(name=STRING, role=role, token=NULLABLE_STRING)
    s["User"] = _obj(name=STRING, role=role, created_at=NUMBER)
    s["UserList"] = _list_of(_ref("User"))
    s["UserCreate"] = _obj(name=STRING, password=STRING, role=role)
    s["UserPatch"] = _obj(required=False, password=STRING, role=role)
    s["PasswordChange"] = _obj(current_password=STRING, new_password=STRING)
    token = _obj(
        id=STRING, user=STRING, role=role, name=STRING, created_at=NUMBER, expires_at=NUMBER,
        parent=NULLABLE_STRING, last_used_at={"type": ["number", "null"]},
    )  # fmt: skip
    s["Token"] = token
    s["TokenList"] = _list_of(_ref("Token"))
    s["TokenCreated"] = _extended(token, secret=STRING)
    days = {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_DAYS}
    s["TokenCreate"] = _obj(required=False, name=STRING, role=role, expires_in_days=days)
    s["TokenCreate"]["required"] = ["name"]
    return s


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": STRING} for name in op.path_params
    ]
    params += [
        {"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
         "description": p.description}
        for p in op.query
    ]  # fmt: skip
    responses: dict[str, Any] = {}
    for code, schema in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": _DESCRIPTIONS.get(code, "OK")}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": _ref(schema)}}
        responses[str(code)] = entry
    doc: dict[str, Any] = {
        "operationId": op.endpoint,
        "summary": op.summary,
        "tags": [op.tag],
        "description": f"Needs the {op.role.label} role.",
        "parameters": params,
        "responses": responses,
    }
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    return doc


_DESCRIPTIONS = {
    200: "OK", 201: "Created", 204: "Done",
    400: "Malformed request (e.g. not a JSON object)",
    401: "Not authenticated: send Authorization: Bearer TOKEN",
    403: "The role does not allow it",
    404: "No such object",
    409: "Stale version or name taken: read the object again and retry",
    413: "Body too large",
    422: "Invalid input: every error names its field",
    428: "The version read is required",
}  # fmt: skip


def registered_operations(app: Flask) -> list[Operation]:
    """Every operation of the API blueprints registered on `app`, in registration order."""
    return [
        op
        for blueprint in app.blueprints.values()
        if isinstance(blueprint, ApiBlueprint)
        for op in blueprint.operations
    ]


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["meta"],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": {
                    "description": _DESCRIPTIONS[401],
                    "content": {"application/json": {"schema": _ref("Errors")}},
                },
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openslb console API",
            "version": "1",
            "description": (
                "Listeners, LB instances, VIP pools, certificates and status of openslb. "
                "Authenticate with `Authorization: Bearer TOKEN` (tokens: POST /api/v1/tokens "
                "or the console's Tokens page). Updates and deletes need the version you "
                "read; a stale one gets 409."
            ),
        },
        "servers": [{"url": PREFIX}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
        "paths": paths,
    }


_DOCUMENT = "openslb.openapi_document"


@bp.get("/openapi.json")
@require(Role.VIEWER)
def openapi() -> Response:
    """The document, built on the first request (every blueprint is registered by then)."""
    if _DOCUMENT not in current_app.extensions:
        current_app.extensions[_DOCUMENT] = document(registered_operations(current_app))
    return jsonify(current_app.extensions[_DOCUMENT])
