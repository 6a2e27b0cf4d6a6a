"""What an operator can do to the desired state: validated, conflict-checked, audited writes.

The `slb` command and the console both go through here, so a listener that would take a
port another listener holds, or an instance that still has listeners, is refused the same
way everywhere, with errors that name the field. Objects cmi made from a Service are
read-only here: they change with their Service.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from slb.certificates import CertificateInfo, check_pair
from slb.model import (
    AddressPool,
    Certificate,
    FieldError,
    Listener,
    LoadBalancer,
    ModelError,
    NodeGroup,
    StoredObject,
    parse,
)
from slb.resolve import port_key, port_taken_by
from slb.snapshot import Delete, Stored
from slb.storage.audit import AuditLog
from slb.storage.secrets import Keyring, SecretStore
from slb.storage.store import Store

T = TypeVar("T", bound=StoredObject)


@dataclass(frozen=True)
class ListenerView:
    """A listener with its revision and whether it is served (else why not)."""

    listener: Listener
    revision: int
    status: str


class Operations:
    def __init__(
        self,
        store: Store,
        actor: str,
        keyring: Keyring | None = None,
        *,
        instances_per_namespace: int = 0,
    ) -> None:
        """`keyring`: what encrypts uploaded private keys (`secrets.load_keyring`);
        `instances_per_namespace`: `cmi.instances_per_namespace`, which instances made for a
        namespace count against as its Services' own do (0: no limit)."""
        self.store = store
        self.actor = actor
        self.instances_per_namespace = instances_per_namespace
        self.audit = AuditLog(store)
        self.secrets = SecretStore(store, keyring)

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, data: Mapping[str, Any]) -> Stored[Listener]:
        fields = {**data, "owner": {"kind": "Operator", "name": self.actor}}
        fields.setdefault("created_at", time.time())
        listener = _parse(Listener, fields)
        self._check_listener(listener)
        return self._write(listener, expect=0, action="create")

    def update_listener(
        self, name: str, changes: Mapping[str, Any], expect: int | None = None
    ) -> Stored[Listener]:
        current = self._operator_owned(Listener, name)
        merged = {**current.obj.model_dump(mode="json"), **changes, "name": name}
        merged["owner"] = current.obj.owner.model_dump(mode="json")
        merged["created_at"] = current.obj.created_at
        listener = _parse(Listener, merged)
        self._check_listener(listener)
        return self._write(
            listener, expect=current.revision if expect is None else expect, action="update"
        )

    def remove_listener(self, name: str, expect: int | None = None) -> int:
        current = self._operator_owned(Listener, name)
        return self._delete(current, expect)

    def put_rule(
        self,
        listener: str,
        rule: Mapping[str, Any],
        position: int | None = None,
        expect: int | None = None,
    ) -> Stored[Listener]:
        """Add a forwarding rule, or replace the one of its name where it stands; at
        `position` (0: first, tried before every other) if given, else last."""
        current = self._operator_owned(Listener, listener)
        rules = [r.model_dump(mode="json") for r in current.obj.routes]
        name = rule.get("name")
        at = next((i for i, r in enumerate(rules) if r["name"] == name), None)
        if at is not None:
            del rules[at]
        where = _position(position, len(rules), at)
        rules.insert(where, dict(rule))
        return self.update_listener(listener, {"routes": rules}, expect)

    def move_rule(
        self, listener: str, rule: str, position: int, expect: int | None = None
    ) -> Stored[Listener]:
        """Put rule `rule` at `position` (0: first); the others keep their order."""
        current = self._operator_owned(Listener, listener)
        rules = [r.model_dump(mode="json") for r in current.obj.routes]
        at = _rule_index(current.obj, rule)
        moved = rules.pop(at)
        rules.insert(_position(position, len(rules), at), moved)
        return self.update_listener(listener, {"routes": rules}, expect)

    def remove_rule(self, listener: str, rule: str, expect: int | None = None) -> Stored[Listener]:
        current = self._operator_owned(Listener, listener)
        rules = [r.model_dump(mode="json") for r in current.obj.routes]
        del rules[_rule_index(current.obj, rule)]
        return self.update_listener(listener, {"routes": rules}, expect)

    def listeners(self) -> list[ListenerView]:
        status = {
            k.decode(): v.decode()
            for k, v in self.store.redis.hgetall(self.store.key("listener-status")).items()
        }
        return [
            ListenerView(stored.obj, stored.revision, status.get(name, "pending"))
            for name, stored in sorted(self.store.all(Listener).items())
        ]

    def _check_listener(self, listener: Listener) -> None:
        snapshot = self.store.snapshot(kinds=[LoadBalancer.kind, Listener.kind])
        balancers = {name: stored.obj for name, stored in snapshot.of(LoadBalancer).items()}
        if listener.load_balancer not in balancers:
            raise _error(Listener, "load_balancer", f"no instance named {listener.load_balancer!r}")
        others = (stored.obj for stored in snapshot.of(Listener).values())
        if (holder := port_taken_by(listener, balancers, others)) is not None:
            where = port_key(listener, balancers[listener.load_balancer])
            raise _error(Listener, "port", f"{where} is taken by listener {holder!r}")

    # -- instances, pools, node groups -----------------------------------------------------

    def add_load_balancer(self, data: Mapping[str, Any]) -> Stored[LoadBalancer]:
        balancer = _parse(LoadBalancer, {**data, "owner": {"kind": "Operator", "name": self.actor}})
        pools = self.store.all(AddressPool)
        if balancer.pool is not None and balancer.pool not in pools:
            raise _error(LoadBalancer, "pool", f"no address pool named {balancer.pool!r}")
        if balancer.vip is not None and not any(p.obj.offers(balancer.vip) for p in pools.values()):
            # The data planes serve a stored VIP as it is: only addresses the admins' pools
            # offer (never the gateway they reserved, nor any other address of the network).
            raise _error(LoadBalancer, "vip", f"{balancer.vip} is in no address pool, or reserved")
        self._check_namespace_quota(balancer)
        return self._write(balancer, expect=0, action="create")

    def _check_namespace_quota(self, balancer: LoadBalancer) -> None:
        """An instance made for a namespace is one more VIP of that tenant's, from a pool
        every tenant shares: refused beyond `cmi.instances_per_namespace`, counting the
        instances its Services own (cmi counts these too)."""
        limit, namespace = self.instances_per_namespace, balancer.namespace
        if not limit or namespace is None:
            return
        held = sum(1 for s in self.store.all(LoadBalancer).values() if s.obj.namespace == namespace)
        if held >= limit:
            raise _error(
                LoadBalancer, "namespace",
                f"namespace {namespace} has {held} instances already, its quota "
                f"(cmi.instances_per_namespace: {limit})",
            )  # fmt: skip

    def remove_load_balancer(self, name: str, expect: int | None = None) -> int:
        current = self._operator_owned(LoadBalancer, name)
        users = sorted(
            n for n, s in self.store.all(Listener).items() if s.obj.load_balancer == name
        )
        if users:
            raise _error(LoadBalancer, "name", f"still has listeners: {', '.join(users)}")
        return self._delete(current, expect)

    def put_pool(self, data: Mapping[str, Any], expect: int | None = None) -> Stored[AddressPool]:
        pool = _parse(AddressPool, data)
        return self._write(pool, expect=expect, action="put")

    def remove_pool(self, name: str, expect: int | None = None) -> int:
        current = self.store.get(AddressPool, name)
        if current is None:
            raise _error(AddressPool, "name", f"no address pool named {name!r}")
        users = sorted(n for n, s in self.store.all(LoadBalancer).items() if s.obj.pool == name)
        if users:
            raise _error(AddressPool, "name", f"still used by instances: {', '.join(users)}")
        return self._delete(current, expect)

    def put_node_group(
        self, data: Mapping[str, Any], expect: int | None = None
    ) -> Stored[NodeGroup]:
        return self._write(_parse(NodeGroup, data), expect=expect, action="put")

    # -- certificates ----------------------------------------------------------------------

    def put_certificate(
        self,
        name: str,
        chain_pem: str,
        key_pem: str,
        expect: int | None = None,
        tenancy: Mapping[str, Any] | None = None,
    ) -> tuple[Stored[Certificate], CertificateInfo]:
        """Upload or rotate a certificate: the chain into the store, the key into secrets.

        The pair is checked first (key matches, chain in order, not expired), so nothing
        is written for a bad upload. The key goes in under a ref derived from it before
        the Certificate names that ref, so no tier ever sees a ref without its key.
        `tenancy` (`namespace`, `allowed_namespaces`, `allowed_namespace_selector`): who may
        use it; a rotation without it keeps the certificate's.
        """
        checked = check_pair(chain_pem, key_pem)
        current = self.store.get(Certificate, name)
        if current is not None:
            current = self._operator_owned(Certificate, name)  # a Secret's: renewed from it
        if tenancy is None and current is not None:
            tenancy = current.obj.model_dump(
                include={"namespace", "allowed_namespaces", "allowed_namespace_selector"}
            )
        certificate = _parse(
            Certificate,
            {"name": name, "chain_pem": chain_pem, "key_ref": checked.key_ref, **(tenancy or {})},
        )
        self.secrets.put_key(checked.key_ref, checked.key_pem)
        action = "create" if expect == 0 else "put"
        return self._write(certificate, expect=expect, action=action), checked.info

    def remove_certificate(self, name: str, expect: int | None = None) -> int:
        """Delete a certificate no listener uses; its key goes too unless another shares it."""
        current = self._operator_owned(Certificate, name)
        snapshot = self.store.snapshot(kinds=[Listener.kind, Certificate.kind])
        users = sorted(n for n, s in snapshot.of(Listener).items() if name in s.obj.certificates)
        if users:
            raise _error(Certificate, "name", f"still used by listeners: {', '.join(users)}")
        revision = self._delete(current, expect)
        ref = current.obj.key_ref
        if not any(s.obj.key_ref == ref for n, s in snapshot.of(Certificate).items() if n != name):
            self.secrets.delete_key(ref)
        return revision

    # -- shared ----------------------------------------------------------------------------

    def _operator_owned(self, cls: type[T], name: str) -> Stored[T]:
        current = self.store.get(cls, name)
        if current is None:
            raise _error(cls, "name", f"no {cls.kind} named {name!r}")
        owner = getattr(current.obj, "owner", None)
        if owner is not None and owner.kind.from_kubernetes:
            raise _error(
                cls,
                "name",
                f"{name!r} belongs to {owner.kind.value} {owner.name}: change the "
                f"{owner.kind.value} instead",
            )
        return current

    def _write(self, obj: T, expect: int | None, action: str) -> Stored[T]:
        before = self.store.get(type(obj), obj.key)
        revision = self.store.put(obj, expect, who=self.actor, why=f"{action} {obj.kind}")
        self.audit.record(
            who=self.actor, action=action, kind=obj.kind, key=obj.key,
            before=before.obj if before else None, after=obj, revision=revision,
        )  # fmt: skip
        return Stored(obj, revision)

    def _delete(self, current: Stored[T], expect: int | None) -> int:
        obj = current.obj
        revision = self.store.apply(
            [Delete(obj.kind, obj.key, current.revision if expect is None else expect)],
            who=self.actor,
            why=f"delete {obj.kind}",
        )
        self.audit.record(
            who=self.actor, action="delete", kind=obj.kind, key=obj.key,
            before=obj, after=None, revision=revision,
        )  # fmt: skip
        return revision


def _parse(cls: type[T], data: Mapping[str, Any]) -> T:
    obj = parse(cls.kind, data)
    assert isinstance(obj, cls)
    return obj


def _rule_index(listener: Listener, rule: str) -> int:
    for i, r in enumerate(listener.routes):
        if r.name == rule:
            return i
    raise _error(Listener, "routes", f"listener {listener.name!r} has no rule named {rule!r}")


def _position(position: int | None, count: int, default: int | None) -> int:
    """Where a rule goes among `count` others: as asked, else where it was, else last."""
    if position is None:
        return count if default is None else default
    if not 0 <= position <= count:
        raise _error(Listener, "routes", f"position {position} is not between 0 and {count}")
    return position


def _error(cls: type[StoredObject], field: str, message: str) -> ModelError:
    return ModelError(cls.kind, [FieldError(field=field, message=message)])
