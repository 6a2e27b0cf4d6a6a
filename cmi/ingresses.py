"""Ingresses and IngressClasses as cmi sees them, cached.

Each change marks dirty what it concerns: an Ingress itself and the Services it names
(stored while an Ingress of openslb's names them, `cmi.build.referenced`); through a canary,
the other Ingresses of its namespace (one of them takes its backends); through a class,
every Ingress. `cmi.cluster` adds the Ingresses a Service or a TLS Secret concerns. The
build step (`cmi.ingress`) reads an Ingress's inputs from here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from cmi import ingress
from cmi.debounce import Debouncer
from cmi.ingress import GROUP, backend_services, ingress_key, is_canary, tls_secrets
from cmi.k8s.client import Body, KubeClient
from cmi.k8s.informer import Informer


class Ingresses:
    """The watched Ingresses and IngressClasses, and who names whom."""

    def __init__(
        self, kube: KubeClient, dirty: Debouncer, scope: str, watch_timeout_s: int
    ) -> None:
        self.dirty = dirty
        base = f"/apis/{GROUP}/v1"

        def informer(path: str, on_change: Callable[[str, Body], None], **kw: Any) -> Informer:
            return Informer(kube, path, on_change, watch_timeout_s=watch_timeout_s, **kw)

        self.classes = informer(f"{base}/ingressclasses", self._class_changed)
        self.ingresses = informer(
            f"{base}{scope}/ingresses", self._ingress_changed, index=_namespace
        )
        self.informers = (self.classes, self.ingresses)
        self._lock = threading.Lock()
        self._named: dict[str, tuple[set[str], set[str]]] = {}
        """Each Ingress's (`namespace/name`) Services and TLS Secrets (`namespace/name`):
        when it changes, the Services it named before are rebuilt too."""
        self._naming: dict[str, set[str]] = {}
        """The Ingresses naming each Service or Secret: looked up, never scanned for."""
        self._canaries: set[str] = set()
        self.built: dict[str, ingress.IngressBuilt] = {}
        """Each Ingress's last build, for the reporter (the controller's thread only)."""

    def keys(self) -> list[str]:
        """Every Ingress's dirty key."""
        return [ingress_key(k) for k, _ in self.ingresses.items()]

    def get(self, key: str) -> Body | None:
        """An Ingress by its dirty key."""
        return self.ingresses.get(key.removeprefix(ingress.KEY_PREFIX))

    def ours(self, body: Body) -> bool:
        return ingress.is_ours(body, dict(self.classes.items()))

    def canaries(self, namespace: str) -> list[Body]:
        """The canary Ingresses of openslb's classes in a namespace, by name."""
        return [
            body
            for _, body in sorted(self.ingresses.indexed_items(namespace))
            if is_canary(body) and self.ours(body)
        ]

    def serving(self, service: str) -> str | None:
        """The instance of the first (by key) of openslb's Ingresses naming this Service (a
        canary's: the first of its namespace's others)."""
        with self._lock:
            naming = sorted(self._naming.get(service, ()))
        for named in naming:
            body = self.ingresses.get(named)
            if body is None or not self.ours(body):
                continue
            if is_canary(body):
                body = self._first_main(named.split("/", 1)[0])
            if body is not None:
                meta = body["metadata"]
                return ingress.instance_name(meta["namespace"], meta["name"])
        return None

    def _first_main(self, namespace: str) -> Body | None:
        """The first (by name) of openslb's Ingresses of a namespace that is no canary."""
        for _, body in sorted(self.ingresses.indexed_items(namespace)):
            if not is_canary(body) and self.ours(body):
                return body
        return None

    def naming(self, named: str) -> set[str]:
        """The Ingresses (their dirty keys) naming this Service or Secret (`namespace/name`)."""
        with self._lock:
            return {ingress_key(k) for k in self._naming.get(named, ())}

    def _ingress_changed(self, key: str, body: Body) -> None:
        """It, and the Services it names before and after; a canary: its namespace's."""
        now = self.ingresses.get(key)
        services = backend_services(now) if now is not None else set()
        secrets = tls_secrets(now) if now is not None else set()
        canary = now is not None and is_canary(now)
        with self._lock:
            services_before, secrets_before = self._named.pop(key, (set(), set()))
            was_canary = key in self._canaries
            for name in services_before | secrets_before:
                naming = self._naming.get(name, set())
                naming.discard(key)
                if not naming:
                    self._naming.pop(name, None)
            if now is not None:
                self._named[key] = (services, secrets)
                for name in services | secrets:
                    self._naming.setdefault(name, set()).add(key)
            self._canaries.discard(key)
            if canary:
                self._canaries.add(key)
        dirty = {ingress_key(key), *services, *services_before}
        if canary or was_canary:
            namespace = key.split("/", 1)[0]
            dirty |= {ingress_key(k) for k, _ in self.ingresses.indexed_items(namespace)}
        self.dirty.add(dirty)

    def _class_changed(self, key: str, body: Body) -> None:
        """A class came, went or changed hands: every Ingress may be, or stop being, ours."""
        self.dirty.add(self.keys())

    def changed(self, named: str) -> Iterable[str]:
        """The Ingresses a change to this Service or Secret concerns: those naming it, and
        (a canary's Service) its namespace's other Ingresses."""
        keys = self.naming(named)
        namespace = named.split("/", 1)[0]
        if any(k.removeprefix(ingress.KEY_PREFIX) in self._canaries for k in keys):
            keys |= {ingress_key(k) for k, _ in self.ingresses.indexed_items(namespace)}
        return keys


def _namespace(body: Body) -> str:
    return str(body["metadata"]["namespace"])
