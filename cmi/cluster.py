"""The cluster as cmi sees it: Services, their EndpointSlices and the Nodes, cached.

Informers keep the caches (`cmi.k8s.informer`); each change marks dirty the Services it
concerns: a Service itself, a Service through one of its EndpointSlices, and through any
Node every Service served in node mode (its backends are the Nodes), and through an
instance an operator changed in the store every Service labelled to share it (`sharing`).
The build step reads a Service's inputs from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from cmi import build as builder
from cmi.annotation import EXPOSE_LABEL
from cmi.build import Built, Defaults, Previous
from cmi.debounce import Debouncer
from cmi.k8s.client import Body, KubeClient
from cmi.k8s.informer import Informer
from cmi.mirror import Mirror
from slb.config import CmiSettings, comma_list, networks
from slb.model import LoadBalancer, Service


class Cluster:
    """The watched caches; `informers` in the order they start and must be synced."""

    def __init__(
        self,
        kube: KubeClient,
        settings: CmiSettings,
        dirty: Debouncer,
        mirror: Mirror,
        watch_timeout_s: int,
    ) -> None:
        self.dirty, self.mirror = dirty, mirror
        self.defaults = Defaults(
            backend_mode="node" if settings.backend_mode == "node" else "pod",
            node_group=settings.node_group,
            pool=settings.pool,
            exclude_unschedulable=settings.exclude_unschedulable,
            endpoint_slices_from=frozenset(comma_list(settings.endpoint_slices_from)),
            refused_backends=(
                *networks(settings.pool_cidrs, "cmi.pool_cidrs"),
                *networks(settings.refused_backend_cidrs, "cmi.refused_backend_cidrs"),
            ),
        )
        scope = f"/namespaces/{settings.namespace}" if settings.namespace else ""
        self.services = Informer(
            kube, f"/api/v1{scope}/services", self._service_changed, watch_timeout_s=watch_timeout_s
        )
        self.slices = Informer(
            kube,
            f"/apis/discovery.k8s.io/v1{scope}/endpointslices",
            self._slice_changed,
            index=slice_service,
            watch_timeout_s=watch_timeout_s,
        )
        self.nodes = Informer(
            kube, "/api/v1/nodes", self._node_changed, watch_timeout_s=watch_timeout_s
        )
        self.informers = (self.nodes, self.slices, self.services)

    def build(self, key: str, previous: Previous, instances: Mapping[str, LoadBalancer]) -> Built:
        """The build step on the Service's cached state; a Service that is gone is withdrawn."""
        body = self.services.get(key)
        if body is None:
            return Built(key, exposed=False)
        return builder.build(
            body,
            slices=self.slices.indexed(key),
            nodes=dict(self.nodes.items()),
            defaults=self.defaults,
            previous=previous,
            instances=instances,
            now=time.time(),
        )

    def _service_changed(self, key: str, body: Body) -> None:
        self.dirty.add([key])

    def _slice_changed(self, key: str, body: Body) -> None:
        service = slice_service(body)
        if service is not None:
            self.dirty.add([service])

    def _node_changed(self, key: str, body: Body) -> None:
        self.dirty.add(
            k for k, obj in self.mirror.of(Service).items() if obj.backend_mode == "node"
        )


def slice_service(body: Body) -> str | None:
    """The key of the Service an EndpointSlice belongs to."""
    name = (body["metadata"].get("labels") or {}).get(builder.SERVICE_NAME_LABEL)
    return f"{body['metadata']['namespace']}/{name}" if name else None


def sharing(instances: Iterable[str], services: Iterable[tuple[str, Body]]) -> set[str]:
    """The Services labelled to share one of these instances: a change to it is theirs too."""
    wanted = set(instances)
    return {
        key
        for key, body in services
        if (body["metadata"].get("labels") or {}).get(EXPOSE_LABEL) in wanted
    }
