"""The audit trail over the API: who changed what, newest first."""

from __future__ import annotations

from dataclasses import asdict

from flask import Response, jsonify, request

from slb.storage.audit import AuditLog
from web.api.common import READ, ApiBlueprint, Param, int_arg
from web.db import get_store

bp = ApiBlueprint("api_audit", __name__, tag="audit")


@bp.operation(
    "/audit", "GET", summary="The audit trail, newest first, filtered by exact fields",
    role=READ, ok=(200, "AuditList"), errors=(422,),
    query=(
        *(Param(f, {"type": "string"}, f"Only entries with this {f}") for f in AuditLog.FILTERS),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
              "At most this many"),
    ),
)  # fmt: skip
def audit_trail() -> Response:
    limit = int_arg("limit", 100, 1, 1000)
    match = {f: request.args[f] for f in AuditLog.FILTERS if request.args.get(f)}
    entries = AuditLog(get_store()).entries(limit=limit, **match)
    return jsonify({"items": [asdict(e) for e in entries]})
