"""Certificates from `kubernetes.io/tls` Secrets, as cert-manager writes and renews them.

A Service names Secrets of its own namespace in `openslb.io/tls-secrets`; its HTTPS ports
terminate TLS with their certificates (a Gateway's HTTPS listeners name theirs in
`tls.certificateRefs`, `cmi.gateway`). Each becomes a `Certificate` the Service owns (named
by `cmi.build.certificate_name`, visible in the console, changed only through the Secret), and the
Secret's private key goes into the secrets store under a ref derived from the key, so the
desired state, the change stream and logs never carry it. A renewal is a new chain and key:
the Certificate changes, and Envoy gets it over SDS with no listener drained.

Fail static: a Secret that is missing or does not hold a usable pair (bad PEM, key not the
certificate's, expired) leaves the certificate it was served with in place, with a Warning
Event that names the Secret and its field (`tls.crt`, `tls.key`), never key material.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slb.certificates import check_pair
from slb.model import Certificate, FieldError, ModelError, Owner

if TYPE_CHECKING:  # the name only (`cmi.build`)
    from cmi.k8s.client import Body

ANNOTATION = "openslb.io/tls-secrets"
SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105  (a Secret type, no password)
FIELD_SELECTOR = f"type={SECRET_TYPE}"
"""cmi watches only TLS Secrets (the API server filters them)."""
MAX_SECRETS = 16
NOT_FOUND, INVALID = "TLSSecretNotFound", "InvalidTLSSecret"
"""The reasons of the Warning Events about a Secret that cannot be used."""
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_SECRET_FIELDS = {"chain_pem": "tls.crt", "key_pem": "tls.key"}
"""check_pair's fields, as the Secret names them."""


@dataclass(frozen=True)
class TlsPair:
    """A certificate a Service owns, with the private key to store before it, if new."""

    certificate: Certificate
    key_pem: str | None = field(default=None, repr=False)
    """None: kept as it was served; its key is in the secrets store already."""


def secret_names(raw: str) -> tuple[str, ...]:
    """`openslb.io/tls-secrets`: comma-separated Secret names; else ValueError saying why."""
    names = tuple(dict.fromkeys(_split(raw)))
    if not names:
        raise ValueError("names no Secret")
    if len(names) > MAX_SECRETS:
        raise ValueError(f"at most {MAX_SECRETS} Secrets (got {len(names)})")
    for name in names:
        if not _SUBDOMAIN.match(name):
            raise ValueError(f"{name!r} is not a Secret name (a DNS subdomain)")
    return names


def names_in(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """The Secret names a Service's annotations give, as far as they can be read (to know
    whose change concerns it; `secret_names` judges the annotation)."""
    return _split(annotations.get(ANNOTATION, ""))


def _split(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def pair_from_secret(
    owner: Owner,
    secret: str,
    name: str,
    body: Body | None,
    previous: Mapping[str, Certificate],
    *,
    named_by: str = ANNOTATION,
) -> tuple[TlsPair | None, tuple[str, str] | None]:
    """Certificate `name` made of Secret `secret` (`namespace/name`) for `owner` (a Service
    or a Gateway, of whose namespace the certificate is) and, if the Secret cannot be used
    as it is, why (an Event's reason and message, naming the Secret as `named_by` does);
    then the one served before is kept, if any."""
    namespace = owner.name.split("/", 1)[0]
    served = previous.get(name)
    kept = TlsPair(served) if served is not None else None
    keeping = "keeping the certificate it was served with" if served else "not used"
    where = f"{named_by}: Secret {secret}"
    if body is None or body.get("type") != SECRET_TYPE:
        return kept, (NOT_FOUND, f"{where}: not found (or not of type {SECRET_TYPE}); {keeping}")
    data = body.get("data") or {}
    try:
        chain_pem, key_pem = (_decoded(data, key) for key in ("tls.crt", "tls.key"))
        checked = check_pair(chain_pem, key_pem)
    except ModelError as exc:
        problems = "; ".join(
            f"{_SECRET_FIELDS.get(e.field, e.field)}: {e.message}" for e in exc.errors
        )
        return kept, (INVALID, f"{where}: {problems}; {keeping}")
    certificate = Certificate(
        name=name,
        chain_pem=chain_pem,
        key_ref=checked.key_ref,
        namespace=namespace,
        owner=owner,
    )
    if served is not None and served == certificate:
        return kept, None
    return TlsPair(certificate, checked.key_pem), None


def _decoded(data: Mapping[str, str], key: str) -> str:
    raw = data.get(key)
    if not raw:
        raise ModelError("Secret", [FieldError(field=key, message="missing or empty")])
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ModelError(
            "Secret", [FieldError(field=key, message="not base64 of PEM text")]
        ) from None
