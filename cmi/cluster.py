"""The cluster as cmi sees it: Services, their EndpointSlices, the Nodes and the
Namespaces' labels, cached.

Informers keep the caches (`cmi.k8s.informer`); each change marks dirty the Services it
concerns: a Service itself, a Service through one of its EndpointSlices, and through any
Node every Service served in node mode (its backends are the Nodes), through a Namespace
whose labels changed every Service of it (an instance may admit it by a selector), through
a TLS Secret the Services of its namespace that name it (`cmi.tlssecret`), and through an
instance an operator changed in the store every Service labelled to share it
(`sharing`). The build step reads a Service's inputs from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from cmi import build as builder
from cmi import gateways, ingress, ingresses, tlssecret
from cmi.annotation import EXPOSE_LABEL
from cmi.build import Built, Defaults, Previous
from cmi.debounce import Debouncer
from cmi.gateway import (
    KEY_PREFIX,
    ROUTE_RESOURCES,
    backend_services,
    build_gateway,
    certificate_secrets,
    is_gateway_key,
)
from cmi.k8s.client import Body, KubeClient
from cmi.k8s.informer import Informer
from cmi.mirror import Mirror
from slb.config import CmiSettings, comma_list, networks
from slb.model import LoadBalancer, ModelError, Service

UNREADABLE = (ValidationError, ModelError, KeyError, TypeError, ValueError)
"""What a Gateway's or an Ingress's build raises on content it cannot read: that object
keeps what it was served with (fail static); the controller goes on."""


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
            load_balancer_class=settings.load_balancer_class,
            claim_classless=settings.claim_classless,
        )
        scope = f"/namespaces/{settings.namespace}" if settings.namespace else ""
        self.services = Informer(
            kube,
            f"/api/v1{scope}/services",
            self._service_changed,
            index=namespace_of,  # a Namespace's or a Secret's change concerns its namespace's
            watch_timeout_s=watch_timeout_s,
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
        self.namespaces = Informer(
            kube,
            "/api/v1/namespaces",
            self._namespace_changed,
            field_selector=f"metadata.name={settings.namespace}" if settings.namespace else None,
            watch_timeout_s=watch_timeout_s,
        )
        self.secrets = Informer(
            kube,
            f"/api/v1{scope}/secrets",
            self._secret_changed,
            field_selector=tlssecret.FIELD_SELECTOR,
            watch_timeout_s=watch_timeout_s,
        )
        self._seen_labels: dict[str, dict[str, str]] = {}
        self._inputs: dict[str, tuple[Any, ...]] = {}
        """Each Service's `build_inputs` as last built from (the informer's thread only)."""
        self._relabelled: set[str] = set()
        """Namespaces whose labels changed (or that came or went) since the controller last
        wrote their `Namespace` objects."""
        self._relabelled_lock = threading.Lock()
        self._kube, self._scope, self._watch_timeout_s = kube, scope, watch_timeout_s
        self._gateway_api = settings.gateway_api
        self.gateways: gateways.Gateways | None = None
        """The Gateway API's objects, once `discover` found them served."""
        self.ingresses = (
            ingresses.Ingresses(kube, dirty, scope, watch_timeout_s) if settings.ingress else None
        )
        """The Ingresses and IngressClasses (every API server serves them)."""

    def discover(self) -> None:
        """Watch the Gateway API too if it is on and the API server has its CRDs (asked
        when cmi starts to lead). Raises what the API server's answer raises."""
        self.gateways = self.gateways or self.gateway_api()

    def gateway_api(self) -> gateways.Gateways | None:
        """The Gateway API's caches, not yet started, if it is on, not watched yet and the
        API server has its CRDs. Raises what the API server's answer raises."""
        if not self._gateway_api or self.gateways is not None:
            return None
        route_kinds = gateways.served(self._kube, self._scope)
        if not route_kinds:
            return None
        return gateways.Gateways(
            self._kube, self.dirty, self._scope, self._watch_timeout_s, route_kinds
        )

    def late_route_kinds(self) -> list[Informer]:
        """Informers, not started, for the route kinds the API server has now and the
        Gateway API's caches do not watch yet (a CRD installed later than the others).
        Raises what the API server's answer raises."""
        if self.gateways is None:
            return []
        missing = [kind for kind in ROUTE_RESOURCES if kind not in self.gateways.routes]
        return self.gateways.watch_kinds(gateways.served(self._kube, self._scope, missing))

    @property
    def informers(self) -> tuple[Informer, ...]:
        """In the order they start and must be synced: namespaces first, so no Service is
        built before its namespace's labels are known."""
        return (
            self.namespaces, self.nodes, self.slices, self.secrets, self.services,
            *(self.gateways.informers if self.gateways is not None else ()),
            *(self.ingresses.informers if self.ingresses is not None else ()),
        )  # fmt: skip

    def gateway_keys(self) -> list[str]:
        """Every Gateway's and Ingress's dirty key."""
        return [
            *(self.gateways.keys() if self.gateways is not None else ()),
            *(self.ingresses.keys() if self.ingresses is not None else ()),
        ]

    def build(self, key: str, previous: Previous, instances: Mapping[str, LoadBalancer]) -> Built:
        """The build step on the Service's (or the Gateway's) cached state; one that is
        gone is withdrawn."""
        if is_gateway_key(key):  # (without the Gateway API, no Gateway: withdrawn)
            return self._build_gateway(key, previous) if self.gateways else Built(key, False)
        if ingress.is_ingress_key(key):
            return self._build_ingress(key, previous) if self.ingresses else Built(key, False)
        body = self.services.get(key)
        if body is None:
            return Built(key, exposed=False)
        built = self._build_service(key, body, previous, instances)
        if built.exposed or built.refused:
            return built
        instance = (self.gateways.serving(key) if self.gateways is not None else None) or (
            self.ingresses.serving(key) if self.ingresses is not None else None
        )
        if instance is None:
            return built
        return builder.referenced(
            body,
            slices=self.slices.indexed(key),
            defaults=self.defaults,
            previous=previous,
            instance=instance,
        )

    def _build_gateway(self, key: str, previous: Previous) -> Built:
        """A Gateway of openslb's class; anything it holds that cmi cannot read keeps what
        it was served with (fail static), never stops the controller."""
        assert self.gateways is not None
        body = self.gateways.gateways.get(key.removeprefix(KEY_PREFIX))
        gateway_class = self.gateways.class_of(body) if body is not None else None
        if body is None or gateway_class is None:
            self.gateways.built.pop(key, None)
            return Built(key, exposed=False)
        routes = self.gateways.routes_of(key)
        names = {s for route in routes for s in backend_services(route)}
        namespaces = {str(route["metadata"]["namespace"]) for route in routes}
        try:
            made = build_gateway(
                body,
                gateway_class=gateway_class,
                routes=routes,
                services=cached(self.services, names),
                namespace_labels={
                    n: labels
                    for n in namespaces
                    if (labels := self.namespace_labels(n)) is not None
                },
                grants=[grant for _, grant in self.gateways.grants.items()],
                secrets=cached(self.secrets, certificate_secrets(body)),
                defaults=self.defaults,
                previous=previous,
                now=time.time(),
            )
        except UNREADABLE as exc:
            why = f"cmi cannot read this Gateway or its routes ({exc!r}): please report it"
            return builder.refused(key, previous, why)
        self.gateways.built[key] = made
        return made.built

    def _build_ingress(self, key: str, previous: Previous) -> Built:
        """An Ingress of openslb's class; what cmi cannot read of it keeps what it was
        served with (fail static), never stops the controller."""
        assert self.ingresses is not None
        body = self.ingresses.get(key)
        if body is None:
            self.ingresses.built.pop(key, None)
            return Built(key, exposed=False)
        namespace = str(body["metadata"]["namespace"])
        canaries = self.ingresses.canaries(namespace)
        names = {s for i in (body, *canaries) for s in ingress.backend_services(i)}
        try:
            made = ingress.build_ingress(
                body,
                classes=dict(self.ingresses.classes.items()),
                canaries=canaries,
                services=cached(self.services, names),
                secrets=cached(self.secrets, ingress.tls_secrets(body)),
                defaults=self.defaults,
                previous=previous,
                now=time.time(),
            )
        except UNREADABLE as exc:
            why = f"cmi cannot read this Ingress ({exc!r}): please report it"
            return builder.refused(key, previous, why)
        self.ingresses.built[key] = made
        return made.built

    def _build_service(
        self, key: str, body: Body, previous: Previous, instances: Mapping[str, LoadBalancer]
    ) -> Built:
        return builder.build(
            body,
            slices=self.slices.indexed(key),
            nodes=dict(self.nodes.items()),
            defaults=self.defaults,
            previous=previous,
            instances=instances,
            namespace_labels=self.namespace_labels(key.split("/", 1)[0]),
            secrets=self._named_secrets(key, body),
            now=time.time(),
        )

    def _named_secrets(self, key: str, body: Body) -> dict[str, Body]:
        """The TLS Secrets of its namespace that a Service names, by name."""
        namespace = key.split("/", 1)[0]
        names = tlssecret.names_in(body["metadata"].get("annotations") or {})
        found = {name: self.secrets.get(f"{namespace}/{name}") for name in names}
        return {name: secret for name, secret in found.items() if secret is not None}

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """A namespace's labels as watched; None if it is not in the cache."""
        body = self.namespaces.get(namespace)
        return None if body is None else dict(body["metadata"].get("labels") or {})

    def take_relabelled(self) -> set[str]:
        """The namespaces whose `Namespace` objects are due, handed out once."""
        with self._relabelled_lock:
            due, self._relabelled = self._relabelled, set()
        return due

    def relabelled(self, namespaces: Iterable[str]) -> None:
        """These namespaces' `Namespace` objects are due (again: a write failed, or a
        resync rechecks every one)."""
        with self._relabelled_lock:
            self._relabelled.update(namespaces)

    def _service_changed(self, key: str, body: Body) -> None:
        """A Service is rebuilt when what the build reads of it changed, or it is gone: at
        10,000 Services, cmi's own status writes (three per Service) would otherwise
        rebuild each three times more."""
        if self.services.get(key) is None:
            self._inputs.pop(key, None)
        else:
            inputs = builder.build_inputs(body)
            if self._inputs.get(key) == inputs:
                return
            self._inputs[key] = inputs
        self.dirty.add([key])
        if self.gateways is not None:  # their routes' ResolvedRefs
            self.dirty.add(self.gateways.service_changed(key))
        if self.ingresses is not None:  # their ports, by name
            self.dirty.add(self.ingresses.changed(key))

    def _slice_changed(self, key: str, body: Body) -> None:
        service = slice_service(body)
        if service is not None:
            self.dirty.add([service])

    def _namespace_changed(self, key: str, body: Body) -> None:
        """Only a change of labels concerns cmi: then the namespace's Services are rebuilt
        (a Service may join, or leave, an instance that admits by a selector) and its
        `Namespace` object is due; "" has the controller turn even if it has no Service."""
        labels = self.namespace_labels(key)
        if self._seen_labels.get(key) == labels:
            return
        if labels is None:
            self._seen_labels.pop(key, None)
        else:
            self._seen_labels[key] = labels
        self.relabelled([key])
        self.dirty.add({"", *(k for k, _ in self.services.indexed_items(key))})
        if self.gateways is not None:  # allowedRoutes may select it
            self.dirty.add(self.gateways.namespace_changed())

    def _secret_changed(self, key: str, body: Body) -> None:
        """The Services of the Secret's namespace that name it are rebuilt (a renewal), and
        the Gateways whose HTTPS listeners name it."""
        namespace, name = key.split("/", 1)
        self.dirty.add(
            k
            for k, service in self.services.indexed_items(namespace)
            if name in tlssecret.names_in(service["metadata"].get("annotations") or {})
        )
        if self.gateways is not None:  # their HTTPS listeners'
            self.dirty.add(self.gateways.secret_changed(key))
        if self.ingresses is not None:
            self.dirty.add(self.ingresses.changed(key))

    def _node_changed(self, key: str, body: Body) -> None:
        self.dirty.add(
            k for k, obj in self.mirror.of(Service).items() if obj.backend_mode == "node"
        )


def cached(informer: Informer, keys: Iterable[str]) -> dict[str, Body]:
    """The objects of these keys that the informer has."""
    return {k: body for k in keys if (body := informer.get(k)) is not None}


def slice_service(body: Body) -> str | None:
    """The key of the Service an EndpointSlice belongs to."""
    name = (body["metadata"].get("labels") or {}).get(builder.SERVICE_NAME_LABEL)
    return f"{body['metadata']['namespace']}/{name}" if name else None


def namespace_of(body: Body) -> str:
    return str(body["metadata"]["namespace"])


def sharing(instances: Iterable[str], services: Iterable[tuple[str, Body]]) -> set[str]:
    """The Services labelled to share one of these instances: a change to it is theirs too."""
    wanted = set(instances)
    return {
        key
        for key, body in services
        if (body["metadata"].get("labels") or {}).get(EXPOSE_LABEL) in wanted
    }
