"""What cmi writes back to Kubernetes: Service status, its finalizer, and Events.

Status goes through the status subresource and only when it differs from what the
Service already shows. `status.loadBalancer.ingress` is only accepted on Services of type
LoadBalancer; every exposed Service also gets the conditions `openslb.io/Exposed` (where
it is served) and `openslb.io/Programmed` (whether every LB node and Envoy of its group
serves the revision that last changed it), so `kubectl describe svc` tells the operator
whether the load balancer is ready, whatever the Service's type.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cmi.k8s.client import Body, KubeClient, KubeError

log = logging.getLogger(__name__)

FINALIZER = "openslb.io/cleanup"
CONDITION = "openslb.io/Exposed"
PROGRAMMED = "openslb.io/Programmed"
Condition = tuple[str, str, str]
"""(status "True"/"False", reason, message)"""
COMPONENT = "openslb-cmi"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _service_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{name}"


class ServiceWriter:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def set_status(
        self,
        body: Body,
        ingress: Sequence[Mapping[str, Any]] | None = None,
        conditions: Mapping[str, Condition | None] | None = None,
    ) -> bool:
        """Write ingress (None: leave it) and our conditions (None: remove one), if changed.

        Conditions that are not ours, and ours not named, are kept as they are; a condition
        whose status, reason and message are unchanged keeps its transition time.
        """
        meta, status = body["metadata"], body.get("status") or {}
        wants_ingress = ingress is not None and body.get("spec", {}).get("type") == "LoadBalancer"
        current_ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        new_ingress = list(ingress or []) if wants_ingress else current_ingress
        current = list(status.get("conditions") or [])
        new = [c for c in current if c.get("type") not in (conditions or {})]
        for type_, wanted in (conditions or {}).items():
            if wanted is None:
                continue
            old = next((c for c in current if c.get("type") == type_), None)
            if old is not None and (old["status"], old["reason"], old["message"]) == wanted:
                new.append(old)
                continue
            state, reason, message = wanted
            new.append({
                "type": type_, "status": state, "reason": reason, "message": message[:32768],
                "lastTransitionTime": _now(), "observedGeneration": meta.get("generation", 0),
            })  # fmt: skip
        new.sort(key=lambda c: str(c.get("type")))
        if new_ingress == current_ingress and new == sorted(
            current, key=lambda c: str(c.get("type"))
        ):
            return False
        patch: dict[str, Any] = {"status": {"conditions": new or None}}
        if wants_ingress:
            patch["status"]["loadBalancer"] = {"ingress": new_ingress or None}
        self.client.request(
            "PATCH",
            _service_path(meta["namespace"], meta["name"]) + "/status",
            body=patch,
            content_type="application/merge-patch+json",
        )
        return True

    def set_finalizer(self, body: Body, present: bool) -> bool:
        """Add or remove our finalizer.

        A JSON patch that first tests the list it read: others' finalizers are never lost,
        and unrelated changes to the Service (our own status writes) do not make it fail.
        """
        meta = body["metadata"]
        old = meta.get("finalizers")
        finalizers = list(old or [])
        if (FINALIZER in finalizers) == present:
            return False
        new = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
        ops: list[dict[str, Any]] = (
            [{"op": "test", "path": "/metadata/finalizers", "value": old},
             {"op": "replace", "path": "/metadata/finalizers", "value": new}]
            if old is not None
            else [{"op": "add", "path": "/metadata/finalizers", "value": new}]
        )  # fmt: skip
        try:
            self.client.request(
                "PATCH",
                _service_path(meta["namespace"], meta["name"]),
                body=ops,
                content_type="application/json-patch+json",
            )
        except KubeError as exc:
            if exc.status in (404, 409, 422):
                return False  # gone, or changed meanwhile: the next reconcile sees it again
            raise
        return True


class GatewayWriter:
    """The status of the Gateway API's objects (and of Ingresses: `api`), written only when
    it changes; a condition
    whose status, reason, message and generation are unchanged keeps its transition time."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def set_status(
        self,
        plural: str,
        body: Body,
        status: Mapping[str, Any],
        *,
        if_unchanged: bool = False,
        api: str = "gateway.networking.k8s.io/v1",
    ) -> bool:
        """Merge `status` (each field whole) into the object's; False: nothing changed.
        `if_unchanged`: only onto the object as `body` has it (its resourceVersion), else
        the API server answers 409 Conflict."""
        meta, current = body["metadata"], body.get("status") or {}
        new = {k: _stamped(v, current.get(k)) for k, v in status.items()}
        if not self.changes(body, new):
            return False
        patch: dict[str, Any] = {"status": new}
        if if_unchanged:
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        self.client.request(
            "PATCH",
            f"/apis/{api}/{self.path(plural, meta)}/status",
            body=patch,
            content_type="application/merge-patch+json",
        )
        return True

    @staticmethod
    def changes(body: Body, status: Mapping[str, Any]) -> bool:
        """Would `status` change the object's as `body` has it (transition times aside)?"""
        current = body.get("status") or {}
        return any(_unstamped(v) != _unstamped(current.get(k)) for k, v in status.items())

    @staticmethod
    def path(plural: str, meta: Mapping[str, Any]) -> str:
        """`[namespaces/NS/]PLURAL/NAME` of an object of the Gateway API."""
        namespace = f"namespaces/{meta['namespace']}/" if meta.get("namespace") else ""
        return f"{namespace}{plural}/{meta['name']}"


def _stamped(new: Any, old: Any) -> Any:
    """`new` with each condition's lastTransitionTime: the old one's if it did not change,
    else now. Lists of conditions are matched by type, other lists by position."""
    if isinstance(new, list):
        olds = old if isinstance(old, list) else []
        if new and all(isinstance(c, dict) and "type" in c and "status" in c for c in new):
            by_type = {c.get("type"): c for c in olds if isinstance(c, dict)}
            return [_condition_time(c, by_type.get(c["type"])) for c in new]
        return [_stamped(v, olds[i] if i < len(olds) else None) for i, v in enumerate(new)]
    if isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        return {k: _stamped(v, before.get(k)) for k, v in new.items()}
    return new


def _condition_time(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    fields = ("status", "reason", "message", "observedGeneration")
    same = old is not None and all(old.get(f) == new.get(f) for f in fields)
    when = old.get("lastTransitionTime") if same and old else None
    return {**new, "lastTransitionTime": when or _now()}


def _unstamped(value: Any) -> Any:
    if isinstance(value, list):
        return [_unstamped(v) for v in value]
    if isinstance(value, dict):
        return {k: _unstamped(v) for k, v in value.items() if k != "lastTransitionTime"}
    return value


class EventRecorder:
    """core/v1 Events on Services; a repeat within `dedupe_s` bumps the count of the first."""

    def __init__(self, client: KubeClient, dedupe_s: float = 600.0) -> None:
        self.client = client
        self.dedupe_s = dedupe_s
        self._seen: dict[tuple[str, str, str, str], tuple[str, int, float]] = {}
        self._lock = threading.Lock()

    def record(self, body: Body, type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (f"{namespace}/{name}", type_, reason, message)
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
        try:
            if seen is not None and now - seen[2] < self.dedupe_s:
                event_name, count, first = seen
                self.client.request(
                    "PATCH",
                    f"/api/v1/namespaces/{namespace}/events/{event_name}",
                    body={"count": count + 1, "lastTimestamp": _now()},
                    content_type="application/merge-patch+json",
                )
                with self._lock:
                    self._seen[key] = (event_name, count + 1, first)
                return
            stamp = _now()
            created = self.client.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/events",
                body={
                    "metadata": {"generateName": f"{name}.", "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": "v1", "kind": "Service", "namespace": namespace,
                        "name": name, "uid": meta.get("uid"),
                        "resourceVersion": meta.get("resourceVersion"),
                    },
                    "type": type_, "reason": reason, "message": message[:1024],
                    "source": {"component": COMPONENT},
                    "reportingComponent": COMPONENT,
                    "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
                },
            )  # fmt: skip
            with self._lock:
                self._seen[key] = (created["metadata"]["name"], 1, now)
                if len(self._seen) > 10_000:
                    cutoff = now - self.dedupe_s
                    self._seen = {k: v for k, v in self._seen.items() if v[2] > cutoff}
        except KubeError as exc:
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace, name, exc)
