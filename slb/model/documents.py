"""Stored documents: every kind by name, validating input, and the stored form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from slb.model.base import SCHEMA_VERSION, StoredObject
from slb.model.errors import FieldError, ModelError
from slb.model.infra import AddressPool, Certificate, LoadBalancer, Namespace, NodeGroup
from slb.model.listener import Listener
from slb.model.service import Service

KINDS: Mapping[str, type[StoredObject]] = {
    cls.kind: cls
    for cls in (LoadBalancer, Listener, Service, Certificate, AddressPool, NodeGroup, Namespace)
}
"""Every kind the store holds, by name."""


def parse(kind: str, data: Mapping[str, Any]) -> StoredObject:
    """Validate `data` as an object of `kind`, raising ModelError naming every bad field."""
    return _validate(kind, data, stored=False)


def _validate(kind: str, data: Mapping[str, Any], *, stored: bool) -> StoredObject:
    """`stored`: `data` is a stored document, maybe written before some setting was refused
    as input; the model reads such a setting as it can (see `Listener`)."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ModelError(kind, [FieldError(field="kind", message=f"unknown kind {kind!r}")])
    try:
        return cls.model_validate(data, context={"stored": stored})
    except ValidationError as exc:
        raise ModelError.from_validation(kind, exc) from None


def dump_document(obj: StoredObject) -> str:
    """The stored form: canonical JSON with the schema version and kind around the object.

    Canonical (sorted keys, no spaces) so equal objects give equal bytes, which lets the
    store drop writes that change nothing.
    """
    return json.dumps(
        {"schema": SCHEMA_VERSION, "kind": obj.kind, "spec": obj.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )


def load_document(raw: str | bytes) -> StoredObject:
    """Read a stored document back, refusing schemas newer than this code understands."""
    doc = json.loads(raw)
    schema = doc.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ModelError(
            str(doc.get("kind")),
            [FieldError(field="schema", message=f"unsupported schema version {schema!r}")],
        )
    return _validate(doc["kind"], doc["spec"], stored=True)
