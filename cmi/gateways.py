"""The Gateway API's objects as cmi sees them, cached: GatewayClasses, Gateways, the
routes of every kind openslb serves (`cmi.gateway.ROUTE_RESOURCES`) and ReferenceGrants.

Each change marks dirty what it concerns: a Gateway itself; through a route, the Gateways
it names and the Services it names (they are stored while a route of openslb's names
them, `cmi.build.referenced`); through a class, its Gateways and its own status; through a
grant, every Gateway. `cmi.cluster` adds the Gateways a Service or a TLS Secret concerns.
The build step (`cmi.gateway`) reads a Gateway's inputs from here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Any

from cmi import gateway
from cmi.debounce import Debouncer
from cmi.gateway import (
    GROUP,
    ROUTE_RESOURCES,
    backend_services,
    gateway_key,
    parent_refs,
    route_key,
    split_route_key,
)
from cmi.k8s.client import Body, KubeClient, KubeError
from cmi.k8s.informer import Informer

log = logging.getLogger(__name__)
CLASS_KEY_PREFIX = "gatewayclass:"
"""A GatewayClass's key among the dirty keys: its status is due."""


def served(
    kube: KubeClient, scope: str = "", among: Collection[str] = tuple(ROUTE_RESOURCES)
) -> list[str]:
    """The route kinds openslb serves (`among` them) that the API server has and cmi may
    list (none: no Gateway API, its CRDs not installed; a cluster may have HTTPRoutes
    without GRPCRoutes). A kind cmi may not list (its RBAC older than cmi) is left out,
    with a warning: its informer would never sync, and cmi never be ready."""
    if not among:
        return []
    try:
        resources = kube.get(f"/apis/{GROUP}/v1").get("resources") or []
    except KubeError as exc:
        if exc.status == 404:
            return []
        raise
    names = {r.get("name") for r in resources}
    if "gateways" not in names:
        return []
    kinds = [kind for kind in among if ROUTE_RESOURCES[kind] in names]
    return [kind for kind in kinds if _may_list(kube, scope, kind)]


def _may_list(kube: KubeClient, scope: str, kind: str) -> bool:
    resource = ROUTE_RESOURCES[kind]
    try:
        kube.get(f"/apis/{GROUP}/v1{scope}/{resource}", limit=1)
    except KubeError as exc:
        if exc.status != 403:
            raise
        log.warning("cmi may not list %s (its RBAC is older than cmi): %s not served",
                    resource, kind)  # fmt: skip
        return False
    return True


class Gateways:
    """The watched Gateway API objects and who names whom."""

    def __init__(
        self,
        kube: KubeClient,
        dirty: Debouncer,
        scope: str,
        watch_timeout_s: int,
        route_kinds: Collection[str] = tuple(ROUTE_RESOURCES),
    ) -> None:
        self.dirty = dirty
        self._kube, self._scope, self._watch_timeout_s = kube, scope, watch_timeout_s
        base = f"/apis/{GROUP}/v1"
        self.classes = self._informer(f"{base}/gatewayclasses", self._class_changed)
        self.gateways = self._informer(
            f"{base}{scope}/gateways", self._gateway_changed, index=_class_name
        )
        self.routes: dict[str, Informer] = {}
        """Each route kind's informer."""
        self.grants = self._informer(
            f"/apis/{GROUP}/v1beta1{scope}/referencegrants", self._grant_changed, index=_namespace
        )
        self.informers: tuple[Informer, ...] = (self.classes, self.grants, self.gateways)
        self.watch_kinds(route_kinds)
        self._lock = threading.Lock()
        self._parents: dict[str, set[str]] = {}
        """Each route's (`cmi.gateway.route_key`) parent Gateways (their keys)."""
        self._backends: dict[str, set[str]] = {}
        """Each route's Services (`namespace/name`)."""
        self._generations: dict[str, int | None] = {}
        """The generation each Gateway and route (by key) was last seen with."""
        self._naming: dict[str, set[str]] = {}
        """The routes naming each Gateway (its key) or Service (`namespace/name`): Services
        change with every endpoint, so who names one is looked up, never scanned for."""
        self.built: dict[str, gateway.GatewayBuilt] = {}
        """Each Gateway's last build, for the reporter (the controller's thread only)."""

    def _informer(self, path: str, on_change: Callable[[str, Body], None], **kw: Any) -> Informer:
        return Informer(self._kube, path, on_change, watch_timeout_s=self._watch_timeout_s, **kw)

    def watch_kinds(self, kinds: Iterable[str]) -> list[Informer]:
        """Informers, not started, for route kinds not watched yet (their CRDs came later
        than the others'): the caller starts them, and waits until they are synced before
        it builds a Gateway again."""
        base = f"/apis/{GROUP}/v1{self._scope}"
        new = {
            kind: self._informer(
                f"{base}/{ROUTE_RESOURCES[kind]}", partial(self._route_changed, kind)
            )
            for kind in kinds
            if kind not in self.routes
        }
        self.routes.update(new)
        self.informers = (*self.informers, *new.values())
        return list(new.values())

    def unwatch_kinds(self, informers: Collection[Informer]) -> None:
        """Forget informers `watch_kinds` made that did not sync (stopped by the caller)."""
        self.routes = {k: i for k, i in self.routes.items() if i not in informers}
        self.informers = tuple(i for i in self.informers if i not in informers)

    # -- reading ---------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every Gateway's dirty key."""
        return [gateway_key(k) for k, _ in self.gateways.items()]

    def routes_of(self, key: str) -> list[Body]:
        """The routes naming a Gateway (its dirty key), in key order."""
        with self._lock:
            names = sorted(self._naming.get(key, ()))
        return [body for name in names if (body := self.route(name)) is not None]

    def route(self, key: str) -> Body | None:
        """A route by `cmi.gateway.route_key`, as cached."""
        kind, namespace, name = split_route_key(key)
        informer = self.routes.get(kind)
        return informer.get(f"{namespace}/{name}") if informer is not None else None

    def ours(self, key: str) -> bool:
        """Is this Gateway (its dirty key) of one of openslb's classes?"""
        body = self.gateways.get(key.removeprefix(gateway.KEY_PREFIX))
        return body is not None and self.class_of(body) is not None

    def class_of(self, body: Body) -> Body | None:
        """The Gateway's class, if it is openslb's."""
        return self.openslb_class(str((body.get("spec") or {}).get("gatewayClassName")))

    def openslb_class(self, name: str) -> Body | None:
        """The GatewayClass `name`, if it is openslb's."""
        found = self.classes.get(name)
        if found is None or (found.get("spec") or {}).get("controllerName") != (
            gateway.CONTROLLER_NAME
        ):
            return None
        return found

    def serving(self, service: str) -> str | None:
        """The instance of the first (by key) of openslb's Gateways whose routes name this
        Service, if any."""
        for key in sorted(self.service_changed(service)):
            if self.ours(key):
                return gateway.instance_name(*key.removeprefix(gateway.KEY_PREFIX).split("/", 1))
        return None

    # -- changes ---------------------------------------------------------------------------

    def _gateway_changed(self, key: str, body: Body) -> None:
        """It, and the Services its routes name (stored while it is openslb's)."""
        dirty = gateway_key(key)
        if self._spec_changed(dirty, self.gateways.get(key)):
            self.dirty.add([dirty, *self._services_of(dirty)])

    def _spec_changed(self, key: str, now: Body | None) -> bool:
        """Does a change concern what a build reads: the object came, went, or has a new
        generation (its spec)? A write of its status, cmi's own above all, does not: each
        would rebuild its Gateway, and hold up the next route's change."""
        generation = now["metadata"].get("generation") if now is not None else None
        with self._lock:
            before = self._generations.pop(key, None)
            if now is not None:
                self._generations[key] = generation
        return now is None or before is None or generation is None or before != generation

    def _services_of(self, gateway_dirty_key: str) -> set[str]:
        with self._lock:
            return {
                s
                for route in self._naming.get(gateway_dirty_key, ())
                for s in self._backends.get(route, ())
            }

    def _route_changed(self, kind: str, namespaced: str, body: Body) -> None:
        """Its Gateways and Services, before and after, are rebuilt."""
        key = route_key(kind, namespaced)
        now = self.routes[kind].get(namespaced)
        if not self._spec_changed(key, now):
            return
        parents = {gateway_key(p) for p in parent_refs(now)} if now else set()
        backends = backend_services(now) if now else set()
        with self._lock:
            before = self._parents.pop(key, set()), self._backends.pop(key, set())
            for named in (*before[0], *before[1]):
                routes = self._naming.get(named, set())
                routes.discard(key)
                if not routes:
                    self._naming.pop(named, None)
            if now is not None:
                self._parents[key], self._backends[key] = parents, backends
                for named in (*parents, *backends):
                    self._naming.setdefault(named, set()).add(key)
        self.dirty.add({*parents, *backends, *before[0], *before[1]})

    def _class_changed(self, key: str, body: Body) -> None:
        gateways = [gateway_key(k) for k, _ in self.gateways.indexed_items(key)]
        self.dirty.add([CLASS_KEY_PREFIX + key, *gateways])

    def _grant_changed(self, key: str, body: Body) -> None:
        """A grant concerns routes of other namespaces naming its own: every Gateway."""
        self.dirty.add(self.keys())

    def secret_changed(self, secret: str) -> list[str]:
        """The Gateways whose listeners name this Secret (`namespace/name`)."""
        return [
            gateway_key(key)
            for key, body in self.gateways.items()
            if secret in gateway.certificate_secrets(body)
        ]

    def namespace_changed(self) -> Iterable[str]:
        """A namespace's labels changed: every Gateway (allowedRoutes may select it)."""
        return self.keys()

    def service_changed(self, service: str) -> set[str]:
        """The Gateways whose routes name this Service (their ResolvedRefs may change)."""
        with self._lock:
            return {p for route in self._naming.get(service, ()) for p in self._parents[route]}


def _class_name(body: Body) -> str:
    return str((body.get("spec") or {}).get("gatewayClassName"))


def _namespace(body: Body) -> str:
    return str(body["metadata"]["namespace"])
