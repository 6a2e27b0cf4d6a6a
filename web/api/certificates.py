"""Certificates over the API: upload a chain and key, rotate, delete; the key is never shown."""

from __future__ import annotations

from typing import Any

from flask import Response, abort, jsonify

from slb.model import Certificate
from web import queries
from web.api.common import (
    READ,
    VERSION_QUERY,
    WRITE,
    ApiBlueprint,
    created,
    field_error,
    json_body,
    take_version,
    with_etag,
)
from web.db import get_store, operations

bp = ApiBlueprint("api_certificates", __name__, tag="certificates")


@bp.operation(
    "/certificates", "GET", summary="Certificates with subject, SANs and days left",
    role=READ, ok=(200, "CertificateList"),
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


@bp.operation(
    "/certificates", "POST",
    summary="Upload a certificate chain and its private key (the key is never returned)",
    role=WRITE, ok=(201, "CertificateItem"), body="CertificateCreate", errors=(409,),
)  # fmt: skip
def create_certificate() -> Response:
    data = json_body()
    tenancy: dict[str, Any] = {
        k: data.pop(k)
        for k in ("namespace", "allowed_namespaces", "allowed_namespace_selector")
        if k in data
    }
    name, chain_pem, key_pem = _certificate_fields(data, name_required=True)
    stored, info = operations().put_certificate(name, chain_pem, key_pem, expect=0, tenancy=tenancy)
    return created(queries.certificate_json(stored, info), f"/api/v1/certificates/{name}")


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


@bp.operation(
    "/certificates/<name>", "GET", summary="A certificate (never its key)",
    role=READ, ok=(200, "CertificateItem"),
)  # fmt: skip
def get_certificate(name: str) -> Response:
    stored = queries.current().snapshot.of(Certificate).get(name)
    if stored is None:
        abort(404, description=f"no certificate named {name!r}")
    return with_etag(queries.certificate_json(stored))


@bp.operation(
    "/certificates/<name>", "PUT",
    summary="Rotate a certificate: a new chain and key (needs the version read)",
    role=WRITE, ok=(200, "CertificateItem"), body="CertificateRotate", errors=(409, 428),
)  # fmt: skip
def rotate_certificate(name: str) -> Response:
    data = json_body()
    version = take_version(Certificate.kind, data)
    if get_store().get(Certificate, name) is None:
        abort(404, description=f"no certificate named {name!r}")
    data.pop("name", None)
    _, chain_pem, key_pem = _certificate_fields(data, name_required=False)
    stored, info = operations().put_certificate(name, chain_pem, key_pem, expect=version)
    return with_etag(queries.certificate_json(stored, info))


@bp.operation(
    "/certificates/<name>", "DELETE",
    summary="Delete a certificate (refused while listeners use it)",
    role=WRITE, ok=(204, None), errors=(409, 422, 428), query=VERSION_QUERY,
)  # fmt: skip
def delete_certificate(name: str) -> Response:
    version = take_version(Certificate.kind)
    if get_store().get(Certificate, name) is None:
        abort(404, description=f"no certificate named {name!r}")
    operations().remove_certificate(name, expect=version)
    return Response(status=204)
