"""What every model object is built on: the frozen base model, shared values, the
stored-object base with its owner, and the schema version of stored documents.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
"""Written into every stored document; readers refuse documents from a newer schema."""


class Model(BaseModel):
    """The base of every model object: immutable, and unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


_shared: dict[object, object] = {}


def _share(value: Any) -> Any:
    """Equal frozen values share one instance (bounded): 100,000 backends mostly carry the
    same conditions and listeners the same health check, which saves a tier's memory."""
    if len(_shared) < 4096:
        return _shared.setdefault(value, value)
    return _shared.get(value, value)


Shared = AfterValidator(_share)


class StoredObject(Model):
    """A top-level object of the desired state, stored under (kind, key)."""

    kind: ClassVar[str]

    @property
    def key(self) -> str:
        name: str = getattr(self, "name")  # noqa: B009 - every subclass has one
        return name


class OwnerKind(StrEnum):
    SERVICE = "Service"
    OPERATOR = "Operator"


class Owner(Model):
    """Who made an object: a Service (then cmi manages it) or an operator."""

    kind: OwnerKind
    name: str = Field(min_length=1, max_length=253)
