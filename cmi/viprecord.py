"""Operators' instances' VIPs, recorded in a ConfigMap cmi owns, beyond the store's reach.

A Service's, a Gateway's and an Ingress's VIP outlive a lost store in their own status
(`Built.remembered_vip`).
An operator's instance has no Kubernetes object: it is lost with the store, and so is its
VIP's allocation. cmi therefore keeps `instance -> VIP` of every operator's instance in the
ConfigMap `cmi.vip_record` (in `cmi.lease_namespace`), and a rebuilt store holds each
recorded address for its instance again: no Service draws it meanwhile, and an operator who
restores the instance under its name gets the VIP it had.

An entry lives as long as IPAM holds the address for the instance, in the store or (after a
loss) once more from the record.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from cmi.k8s.client import REQUEST_ERRORS, KubeClient, KubeError
from slb.model import IPAddress

log = logging.getLogger(__name__)


class VipRecord:
    """The ConfigMap: read in full, written whole and only when it changes."""

    def __init__(self, kube: KubeClient, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        self.written: dict[str, IPAddress] | None = None
        """What the ConfigMap holds as last read or written; None: not known."""

    def load(self) -> dict[str, IPAddress] | None:
        """The recorded VIPs (none if there is no record yet); None if the API server cannot
        say now. Entries that are not addresses (edited by hand) are left out, and said."""
        try:
            body = self.kube.get(self.path)
        except REQUEST_ERRORS as exc:
            if isinstance(exc, KubeError) and exc.status == 404:
                self.written = {}
                return {}
            log.warning("cannot read the VIP record %s/%s: %s", self.namespace, self.name, exc)
            return None
        recorded: dict[str, IPAddress] = {}
        for instance, text in (body.get("data") or {}).items():
            try:
                recorded[instance] = ipaddress.ip_address(text)
            except ValueError:
                log.warning("%s/%s: %s is not an address (instance %s): ignored",
                            self.namespace, self.name, text, instance)  # fmt: skip
        self.written = recorded
        return recorded

    def recorded(self) -> dict[str, IPAddress] | None:
        """What the record holds: as last read or written, else read now (None: unknown)."""
        return self.written if self.written is not None else self.load()

    def write(self, vips: Mapping[str, IPAddress]) -> None:
        """Make the record say `vips`, if it does not already; a failure is said, and the
        next call tries again."""
        if self.recorded() in (None, dict(vips)):
            return
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "openslb-cmi"},
            },
            "data": {instance: str(vip) for instance, vip in sorted(vips.items())},
        }
        try:
            try:
                self.kube.request("PUT", self.path, body=body)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                self.kube.request("POST", self.path.rsplit("/", 1)[0], body=body)
        except REQUEST_ERRORS as exc:
            self.written = None  # read it again before the next try
            log.warning("cannot write the VIP record %s/%s: %s", self.namespace, self.name, exc)
            return
        self.written = dict(vips)
        log.info("recorded the VIPs of %d operator instance(s) in %s/%s",
                 len(vips), self.namespace, self.name)  # fmt: skip
