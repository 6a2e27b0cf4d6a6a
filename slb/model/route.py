"""L7 routing rules: which requests a listener sends to which backends."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import AfterValidator, Field, field_validator, model_validator

from slb.model.base import Model
from slb.model.errors import CrossFieldError
from slb.model.fields import Host, Name, PortRef
from slb.selector import LabelSelector

_GRPC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def _grpc_service(value: str) -> str:
    if len(value) > 256 or not all(_GRPC_NAME.match(part) for part in value.split(".")):
        raise ValueError(
            f"{value!r} is not a fully qualified gRPC service name such as 'shop.v1.Cart'"
        )
    return value


def _grpc_method(value: str) -> str:
    if len(value) > 128 or not _GRPC_NAME.match(value):
        raise ValueError(f"{value!r} is not a gRPC method name such as 'GetCart'")
    return value


class Route(Model):
    """An L7 routing rule: requests it matches go to its own backends.

    A route matches on hosts (any of them; none: every host) and on either a path prefix
    or a gRPC service and optional method. Its backends are the Services its selector
    picks on its target port, and its timeout bounds each request; all three default to
    the listener's. Routes are tried in order, and a request no route matches goes to the
    listener's own backends.
    """

    name: Name
    hosts: tuple[Host, ...] = Field(default=(), max_length=64)
    path_prefix: str | None = Field(default=None, min_length=1, max_length=1024)
    grpc_service: Annotated[str, AfterValidator(_grpc_service)] | None = None
    grpc_method: Annotated[str, AfterValidator(_grpc_method)] | None = None
    selector: LabelSelector | None = None
    target_port: PortRef | None = None
    timeout_s: int | None = Field(
        default=None, ge=0, le=86400, description="0: no limit; none: the listener's"
    )

    @field_validator("selector")
    @classmethod
    def _selector_not_empty(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and selector.empty:
            raise ValueError("must select at least one label; leave it out to use the listener's")
        return selector

    @model_validator(mode="after")
    def _one_kind_of_match(self) -> Self:
        problems = []
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            problems.append(("path_prefix", "must start with '/'"))
        if self.path_prefix is not None and self.grpc_service is not None:
            problems.append(("grpc_service", "a route matches a path prefix or a gRPC service"))
        if self.grpc_method is not None and self.grpc_service is None:
            problems.append(("grpc_method", "needs grpc_service"))
        if problems:
            raise CrossFieldError(problems)
        return self
