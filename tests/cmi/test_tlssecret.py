"""Certificates from `kubernetes.io/tls` Secrets (pure): the annotation, a Secret -> a
Certificate the Service owns with its key kept apart, and what a Service's HTTPS port does
when a Secret is missing or bad (keeps what it served; never passes TLS through)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from cmi import annotation, tlssecret
from cmi.build import Defaults, Previous, build, certificate_name
from devbed.pki import Pair, self_signed
from slb.certificates import check_pair
from slb.model import OwnerKind, Protocol

DEFAULTS = Defaults(endpoint_slices_from=frozenset({"*"}))
SITE = self_signed("shop.example.test")
RENEWED = self_signed("shop.example.test")


def secret(pair: Pair | None = SITE, **data: str) -> dict[str, Any]:
    encoded = (
        {"tls.crt": _b64(pair.chain_pem), "tls.key": _b64(pair.key_pem)} if pair is not None else {}
    )
    return {
        "metadata": {"namespace": "shop", "name": "site"},
        "type": tlssecret.SECRET_TYPE,
        "data": {**encoded, **data},
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def https_service(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop", "name": "web",
            "labels": {annotation.EXPOSE_LABEL: "true"},
            "annotations": {tlssecret.ANNOTATION: "site", **(annotations or {})},
        },
        "spec": {"ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "appProtocol": "https",
             "targetPort": 8443},
            {"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"},
        ]},
    }  # fmt: skip


def built(secrets: dict[str, Any], previous: Previous | None = None, **kw: Any) -> Any:
    return build(
        https_service(**kw), slices=[], nodes={}, defaults=DEFAULTS,
        previous=previous or Previous(), instances={}, secrets=secrets,
    )  # fmt: skip


def test_the_annotation_names_secrets_of_the_namespace() -> None:
    assert tlssecret.secret_names(" a, b.c ,a") == ("a", "b.c")
    for bad, why in [("", "names no Secret"), ("Site", "not a Secret name"),
                     (",".join(f"s{i}" for i in range(17)), "at most 16")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            tlssecret.secret_names(bad)
    parsed = annotation.parse({tlssecret.ANNOTATION: "no/slash"})
    assert parsed.settings is None
    assert [p.annotation for p in parsed.problems] == [tlssecret.ANNOTATION]


def test_a_secret_becomes_a_certificate_the_service_owns_and_its_key_stays_apart() -> None:
    result = built({"site": secret()})
    (pair,) = result.certificates
    cert = pair.certificate
    assert cert.name == certificate_name("shop", "web", "site")
    assert (cert.namespace, cert.owner.kind, cert.owner.name) == ("shop", OwnerKind.SERVICE,
                                                                  "shop/web")  # fmt: skip
    assert cert.chain_pem == SITE.chain_pem
    assert "PRIVATE KEY" not in cert.model_dump_json()
    assert cert.key_ref == check_pair(SITE.chain_pem, SITE.key_pem).key_ref
    assert pair.key_pem is not None
    assert "PRIVATE KEY" in pair.key_pem
    assert "PRIVATE KEY" not in repr(pair)
    https = next(listener for listener in result.listeners if listener.port == 443)
    assert https.protocol is Protocol.HTTPS
    assert https.certificates == (cert.name,)
    plain = next(listener for listener in result.listeners if listener.port == 80)
    assert plain.certificates == ()


def test_a_renewal_is_a_new_chain_and_key_and_an_unchanged_secret_writes_no_key() -> None:
    first = built({"site": secret()}).certificates[0].certificate
    same = built({"site": secret()}, Previous(certificates={first.name: first}))
    assert same.certificates[0].certificate == first
    assert same.certificates[0].key_pem is None  # stored already
    renewed = built({"site": secret(RENEWED)}, Previous(certificates={first.name: first}))
    pair = renewed.certificates[0]
    assert pair.certificate.chain_pem == RENEWED.chain_pem
    assert pair.certificate.key_ref != first.key_ref
    assert pair.key_pem is not None


def test_a_bad_or_missing_secret_keeps_the_certificate_served_and_names_the_field() -> None:
    first = built({"site": secret()}).certificates[0].certificate
    served = Previous(certificates={first.name: first})
    other_key = self_signed("elsewhere.test").key_pem
    cases = [
        ({"site": secret(RENEWED, **{"tls.key": _b64(other_key)})}, tlssecret.INVALID,
         "tls.key: does not match"),
        ({"site": secret(None, **{"tls.crt": "%%%", "tls.key": _b64(SITE.key_pem)})},
         tlssecret.INVALID, "tls.crt: not base64"),
        ({"site": secret(None)}, tlssecret.INVALID, "tls.crt: missing"),
        ({}, tlssecret.NOT_FOUND, "not found"),
    ]  # fmt: skip
    for secrets, reason, words in cases:
        result = built(secrets, served)
        assert [p.certificate for p in result.certificates] == [first]
        assert result.certificates[0].key_pem is None
        (event,) = [e for e in result.events if e.reason == reason]
        assert words in event.message
        assert "Secret shop/site" in event.message
        assert "keeping the certificate it was served with" in event.message
        assert "PRIVATE" not in event.message
        assert other_key[40:80] not in event.message
        https = next(listener for listener in result.listeners if listener.port == 443)
        assert https.certificates == (first.name,)


def test_an_expired_certificate_in_the_secret_is_refused() -> None:
    old = self_signed("shop.example.test", days=-1)
    result = built({"site": secret(old)})
    assert result.certificates == ()
    assert any("expired" in e.message and "tls.crt" in e.message for e in result.events)


def test_an_https_port_asked_to_terminate_never_passes_tls_through_without_a_certificate() -> None:
    result = built({})
    assert 443 not in {listener.port for listener in result.listeners}
    assert 80 in {listener.port for listener in result.listeners}
    (event,) = [e for e in result.events if e.reason == "NoCertificate"]
    assert "port 443" in event.message
    assert "port not served" in event.message
    served = built({"site": secret()})
    https = next(listener for listener in served.listeners if listener.port == 443)
    kept = built({}, Previous(listeners={https.name: https}))
    assert next(listener for listener in kept.listeners if listener.port == 443) == https


def test_bad_annotations_keep_the_certificates_served() -> None:
    first = built({"site": secret()}).certificates[0].certificate
    result = built(
        {"site": secret(RENEWED)},
        Previous(certificates={first.name: first}),
        annotations={"openslb.io/scheduler": "nonsense"},
    )
    assert [p.certificate for p in result.certificates] == [first]
