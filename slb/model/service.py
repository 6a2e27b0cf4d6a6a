"""Services as cmi sees them in Kubernetes: their ports and their backends."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from slb.model.base import Model, Shared, StoredObject
from slb.model.fields import IPAddress, Name, Port, PortRef
from slb.selector import check_labels


class Conditions(Model):
    """EndpointSlice conditions of one backend."""

    ready: bool = True
    serving: bool = True
    terminating: bool = False


MAX_WEIGHT = 65535
"""A real server's largest weight (IPVS's, as `ipvsadm` takes it)."""


class Backend(Model):
    """One real server: an address and port that receives traffic."""

    address: IPAddress
    port: Port
    weight: int = Field(default=1, ge=0, le=MAX_WEIGHT, description="0: drain, no new connections")
    node: str | None = Field(default=None, max_length=253)
    zone: str | None = None
    """Any string: the API server does not check an endpoint's zone."""
    conditions: Annotated[Conditions, Shared] = Conditions()


class ServicePort(Model):
    """A Service's port as the API server validated it (its limits, no stricter)."""

    name: str = Field(default="", max_length=63, description="a DNS label; empty if alone")
    port: Port
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None
    target_port: PortRef | None = None
    node_port: Port | None = None


class Service(StoredObject):
    """A labelled Kubernetes Service as cmi saw it, with its backends per port name."""

    kind: ClassVar[str] = "Service"

    namespace: Name
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    load_balancer: Name
    ports: tuple[Annotated[ServicePort, Shared], ...] = ()
    """Shared: most Services' ports are alike (`http`, 80 -> 8080)."""
    backends: dict[str, tuple[Backend, ...]] = Field(default_factory=dict)
    backend_mode: Literal["pod", "node"] = "pod"
    """pod: the endpoints' pod IPs on the target port; node: node IPs on the NodePort."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        check_labels(labels)
        return labels

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_named(self, target: int | str) -> ServicePort | None:
        """The Service port a listener's target_port means: by name, else by number."""
        for port in self.ports:
            if target in (port.name, port.port):
                return port
        return None
