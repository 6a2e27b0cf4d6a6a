"""The desired-state model: what the load balancer must look like.

Every tier reads these objects and nothing else, so validation lives here once: the
console, the CLI, cmi and the store all reject the same bad input with the same
field-named errors. Objects are immutable; a change is a new object written to the
store, which gives it a revision.

This package's `__init__` is the model's one public import path: import from `slb.model`.
Its submodules are the implementation, free to move things between them: `errors` (the
field-named errors), `fields` (shared field types and their validators), `base` (the base
models, the owner of an object, the schema version), `traffic` (protocols, schedulers,
health checks, persistence), `route` and `listener`, `service` (Services and their
backends), `infra` (node groups, load balancers, address pools, certificates, the namespaces'
labels) and `documents` (the kinds and their stored form).
"""

from __future__ import annotations

from slb.model.base import SCHEMA_VERSION, Owner, OwnerKind, Shared, StoredObject
from slb.model.documents import KINDS, dump_document, load_document, parse
from slb.model.errors import CrossFieldError, FieldError, ModelError
from slb.model.fields import (
    Host,
    IPAddress,
    IPNetwork,
    Name,
    Port,
    PortRef,
    ServiceKey,
    host_covers,
    is_dns_label,
)
from slb.model.infra import (
    AddressPool,
    Certificate,
    LBNode,
    LoadBalancer,
    Namespace,
    NamespaceSelector,
    NodeGroup,
)
from slb.model.listener import MAX_ROUTES, Listener
from slb.model.route import (
    GROUP_REFERENCE,
    PATH_MATCHES,
    FixedResponse,
    ForwardTarget,
    Header,
    HeaderChanges,
    HeaderMatch,
    MatchType,
    Method,
    Mirror,
    QueryMatch,
    Redirect,
    RedirectCode,
    Retry,
    RetryOn,
    Rewrite,
    Route,
    Scheme,
    ValueMatch,
    named_service,
    parse_value_matches,
    segments_pattern,
    target_fields,
)
from slb.model.service import MAX_WEIGHT, Backend, Conditions, Service, ServicePort
from slb.model.traffic import (
    DEFAULT_EXPECTED_CODES,
    BackendProtocol,
    BackendTls,
    ClientAuthMode,
    ClientCertificates,
    Forwarding,
    HealthCheck,
    HealthCheckType,
    Limits,
    Persistence,
    PersistenceMode,
    Protocol,
    Scheduler,
    TlsPolicy,
)

__all__ = [
    "DEFAULT_EXPECTED_CODES",
    "GROUP_REFERENCE",
    "KINDS",
    "MAX_ROUTES",
    "MAX_WEIGHT",
    "PATH_MATCHES",
    "SCHEMA_VERSION",
    "AddressPool",
    "Backend",
    "BackendProtocol",
    "BackendTls",
    "Certificate",
    "ClientAuthMode",
    "ClientCertificates",
    "Conditions",
    "CrossFieldError",
    "FieldError",
    "FixedResponse",
    "ForwardTarget",
    "Forwarding",
    "Header",
    "HeaderChanges",
    "HeaderMatch",
    "HealthCheck",
    "HealthCheckType",
    "Host",
    "IPAddress",
    "IPNetwork",
    "LBNode",
    "Limits",
    "Listener",
    "LoadBalancer",
    "MatchType",
    "Method",
    "Mirror",
    "ModelError",
    "Name",
    "Namespace",
    "NamespaceSelector",
    "NodeGroup",
    "Owner",
    "OwnerKind",
    "Persistence",
    "PersistenceMode",
    "Port",
    "PortRef",
    "Protocol",
    "QueryMatch",
    "Redirect",
    "RedirectCode",
    "Retry",
    "RetryOn",
    "Rewrite",
    "Route",
    "Scheduler",
    "Scheme",
    "Service",
    "ServiceKey",
    "ServicePort",
    "Shared",
    "StoredObject",
    "TlsPolicy",
    "ValueMatch",
    "dump_document",
    "host_covers",
    "is_dns_label",
    "load_document",
    "named_service",
    "parse",
    "parse_value_matches",
    "segments_pattern",
    "target_fields",
]
