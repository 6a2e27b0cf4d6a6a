"""What every model object is built on: the frozen base model, shared values, the
stored-object base with its owner, and the schema version of stored documents.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
"""Written into every stored document; readers refuse documents from a newer schema."""


class Model(BaseModel):
    """The base of every model object: immutable, and unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    @model_validator(mode="after")
    def _share_fields_set(self) -> Self:
        """A stored document names every field, so each of 100,000 backends read from the
        store carried its own set of six names (728 bytes, a third of its memory): equal
        sets share one instance. pydantic copies the set before it changes one (model_copy)
        and never changes a frozen model's."""
        given = self.__pydantic_fields_set__
        shared = _one_of(_fields_sets, frozenset(given), given)
        object.__setattr__(self, "__pydantic_fields_set__", shared)
        return self


_fields_sets: dict[Any, Any] = {}
_shared: dict[Any, Any] = {}


def _one_of(table: dict[Any, Any], key: Any, value: Any) -> Any:
    """The instance `table` holds for `key`, else `value`, kept for next time while the
    table is small (4,096): hostile input cannot grow it without bound."""
    if len(table) < 4096:
        return table.setdefault(key, value)
    return table.get(key, value)


def _share(value: Any) -> Any:
    """Equal frozen values share one instance (bounded): 100,000 backends mostly carry the
    same conditions and listeners the same health check, which saves a tier's memory."""
    return _one_of(_shared, value, value)


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
    GATEWAY = "Gateway"
    """A Gateway API Gateway (`cmi.gateway`): its instance and listeners."""
    INGRESS = "Ingress"
    """A Kubernetes Ingress (`cmi.ingress`): its instance, listeners and certificates."""
    OPERATOR = "Operator"

    @property
    def by_routes(self) -> bool:
        """Its listeners forward by their routes alone, each naming its Services."""
        return self in (OwnerKind.GATEWAY, OwnerKind.INGRESS)

    @property
    def from_kubernetes(self) -> bool:
        """Made by cmi of a Kubernetes object: changed there, never by an operator."""
        return self is not OwnerKind.OPERATOR


class Owner(Model):
    """Who made an object: a Kubernetes object (a Service or a Gateway, `namespace/name`;
    then cmi manages it) or an operator."""

    kind: OwnerKind
    name: str = Field(min_length=1, max_length=253)
