"""The pure translation of Ingresses (`cmi.ingress`): an Ingress of openslb's class into its
own instance and listeners, in ingress-nginx's order, with the annotations that map onto
openslb's features, canaries, and every other annotation named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cmi.build import Defaults, Previous
from cmi.ingress import (
    ANNOTATIONS,
    CONTROLLER,
    DEFAULT_CLASS,
    NGINX,
    NOT_FOUND_RULE,
    IngressBuilt,
    build_ingress,
    instance_name,
    is_ours,
)
from slb.model import BackendProtocol, Listener, OwnerKind, PersistenceMode, Protocol, Route
from tests.cmi.test_gateway import SITE, svc, tls_secret

CLASSES = {"openslb": {"metadata": {"name": "openslb"}, "spec": {"controller": CONTROLLER}},
           "nginx": {"metadata": {"name": "nginx"},
                     "spec": {"controller": "k8s.io/ingress-nginx"}}}  # fmt: skip
SERVICES = {
    "shop/web": svc("shop", "web"),
    "shop/api": {"metadata": {"namespace": "shop", "name": "api"},
                 "spec": {"ports": [{"name": "grpc", "port": 50051}]}},
    "shop/web-next": svc("shop", "web-next"),
}  # fmt: skip


def backend(name: str = "web", port: int | str = 80) -> dict[str, Any]:
    key = "number" if isinstance(port, int) else "name"
    return {"service": {"name": name, "port": {key: port}}}


def path(
    value: str = "/", kind: str = "Prefix", to: str = "web", port: int | str = 80
) -> dict[str, Any]:
    return {"path": value, "pathType": kind, "backend": backend(to, port)}


def ing(
    *rules: dict[str, Any],
    name: str = "shop",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name,
                     "annotations": {NGINX + k: v for k, v in (annotations or {}).items()}},
        "spec": {"ingressClassName": spec.pop("class_name", "openslb"),
                 "rules": list(rules), **spec},
    }  # fmt: skip


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    return {**({"host": host} if host else {}), "http": {"paths": list(paths)}}


def build(ingress: dict[str, Any], **kw: Any) -> IngressBuilt:
    return build_ingress(
        ingress,
        classes=kw.pop("classes", CLASSES),
        canaries=kw.pop("canaries", ()),
        services=kw.pop("services", SERVICES),
        secrets=kw.pop("secrets", {}),
        defaults=Defaults(),
        previous=kw.pop("previous", Previous()),
    )


def port(made: IngressBuilt, number: int) -> Listener:
    return next(li for li in made.built.listeners if li.port == number)


def summary(r: Route) -> tuple[Any, ...]:
    match = r.path_exact or r.path_segments or r.path_prefix or r.path_regex
    action = (
        tuple((t.service, t.target_port, t.weight) for t in r.forward_to)
        or (r.redirect and (r.redirect.scheme, r.redirect.code))
        or (r.fixed_response and r.fixed_response.status)
    )
    return (r.hosts, match, action)


def test_an_ingress_gets_an_instance_of_its_own_and_its_rules_in_ingress_nginx_order() -> None:
    made = build(ing(
        rule(None, path("/", to="web")),
        rule("*.example.test", path("/", to="web")),
        rule("shop.example.test", path("/api", to="api", port="grpc"),
             path("/api/v2/login", "Exact"), path("/", to="web")),
    ))  # fmt: skip
    built = made.built
    assert built.exposed
    assert built.instance == instance_name("shop", "shop")
    assert built.dedicated is not None
    assert built.dedicated.owner.kind is OwnerKind.INGRESS
    assert [li.port for li in built.listeners] == [80]
    http = port(made, 80)
    assert http.protocol is Protocol.HTTP
    assert http.owner.name == "shop/shop"
    assert [summary(r) for r in http.routes] == [
        (("shop.example.test",), "/api/v2/login", (("shop/web", 80, 1),)),
        (("shop.example.test",), "/api", (("shop/api", 50051, 1),)),  # by port name
        (("shop.example.test",), "/", (("shop/web", 80, 1),)),
        (("*.example.test",), "/", (("shop/web", 80, 1),)),
        ((), "/", (("shop/web", 80, 1),)),
        ((), None, 404),
    ]
    assert http.routes[-1].name == NOT_FOUND_RULE


def test_an_ingress_whose_store_was_lost_asks_for_the_address_its_status_names() -> None:
    """Its VIP outlives the store in `status.loadBalancer`; once the store has the instance,
    the store's VIP is the one served and nothing is remembered."""
    lost = ing(rule(None, path("/", to="web")))
    lost["status"] = {"loadBalancer": {"ingress": [{"ip": "198.18.0.9"}]}}
    assert str(build(lost).built.remembered_vip) == "198.18.0.9"
    assert build(ing(rule(None, path("/", to="web")))).built.remembered_vip is None
    stored = build(lost).built.dedicated
    assert stored is not None
    kept = stored.model_copy(update={"vip": "198.18.0.4"})
    made = build(lost, previous=Previous(load_balancer=kept)).built
    assert made.remembered_vip is None
    assert made.dedicated is not None
    assert str(made.dedicated.vip) == "198.18.0.4"


def test_only_ingresses_of_openslbs_class_or_the_default_one_are_built() -> None:
    assert build(ing(rule(None, path()), class_name="nginx")).built.foreign
    classless = ing(rule(None, path()))
    del classless["spec"]["ingressClassName"]
    assert not is_ours(classless, CLASSES)
    default = {
        **CLASSES["openslb"],
        "metadata": {"name": "openslb", "annotations": {DEFAULT_CLASS: "true"}},
    }
    assert is_ours(classless, {**CLASSES, "openslb": default})
    legacy = {
        **classless,
        "metadata": {
            **classless["metadata"],
            "annotations": {"kubernetes.io/ingress.class": "openslb"},
        },
    }
    assert is_ours(legacy, CLASSES)


def test_a_missing_service_or_port_answers_503_and_an_event_names_it() -> None:
    made = build(ing(rule(None, path("/a", to="gone"), path("/b", port=81)),
                     defaultBackend=backend("web")))  # fmt: skip
    routes = port(made, 80).routes
    assert [summary(r)[2] for r in routes] == [503, 503, (("shop/web", 80, 1),)]
    messages = [e.message for e in made.built.events if e.reason == "BackendNotFound"]
    assert any("shop/gone" in m for m in messages)
    assert any("port 81" in m for m in messages)


def test_tls_serves_https_and_redirects_its_hosts_from_http_unless_told_not_to() -> None:
    secrets = {"shop/site": tls_secret("shop", "site")}
    spec: dict[str, Any] = {"tls": [{"hosts": ["shop.example.test"], "secretName": "site"}]}
    made = build(ing(rule("shop.example.test", path()), rule("other.test", path()), **spec),
                 secrets=secrets)  # fmt: skip
    https = port(made, 443)
    assert https.protocol is Protocol.HTTPS
    assert len(https.certificates) == 1
    assert made.built.certificates[0].certificate.chain_pem.strip() == SITE.chain_pem.strip()
    assert [summary(r)[2] for r in https.routes[:2]] == [(("shop/web", 80, 1),)] * 2
    http = [summary(r) for r in port(made, 80).routes]
    assert http[0] == (("shop.example.test",), "/", ("https", 308))
    assert http[1] == (("other.test",), "/", (("shop/web", 80, 1),))  # no TLS for it
    off = build(ing(rule("shop.example.test", path()), annotations={"ssl-redirect": "false"},
                    **spec), secrets=secrets)  # fmt: skip
    assert summary(port(off, 80).routes[0])[2] == (("shop/web", 80, 1),)
    forced = build(ing(rule("other.test", path()), annotations={"force-ssl-redirect": "true"}))
    assert summary(port(forced, 80).routes[0])[2] == ("https", 308)


def test_a_missing_tls_secret_is_named_and_no_https_listener_is_made() -> None:
    made = build(ing(rule(None, path()), tls=[{"secretName": "nope"}]))
    assert [li.port for li in made.built.listeners] == [80]
    assert any("shop/nope" in e.message for e in made.built.events if e.type == "Warning")


def test_listener_annotations_map_onto_openslbs_features() -> None:
    made = build(ing(rule(None, path()), annotations={
        "whitelist-source-range": "198.18.0.0/24, 198.19.1.1",
        "proxy-read-timeout": "120", "proxy-send-timeout": "30",
        "affinity": "cookie", "session-cookie-name": "route", "session-cookie-max-age": "600",
        "limit-rps": "50", "backend-protocol": "GRPC",
    }))  # fmt: skip
    http = port(made, 80)
    assert [str(n) for n in http.allowed_sources] == ["198.18.0.0/24", "198.19.1.1/32"]
    assert http.idle_timeout_s == 120
    assert http.persistence.mode is PersistenceMode.COOKIE
    assert (http.persistence.cookie_name, http.persistence.timeout_s) == ("route", 600)
    assert http.limits.requests_per_second == 50
    assert http.routes[0].backend_protocol is BackendProtocol.H2C
    assert any(e.reason == "AnnotationApproximated" and "per client" in e.message
               for e in made.built.events)  # fmt: skip


def test_rewrite_target_replaces_the_path_with_the_regexs_groups() -> None:
    made = build(ing(rule(None, path("/shop(/|$)(.*)", "ImplementationSpecific")),
                     annotations={"rewrite-target": "/$2"}))  # fmt: skip
    first = port(made, 80).routes[0]
    assert first.path_regex == "(?i)(?:/shop(/|$)(.*)).*"
    assert first.rewrite is not None
    assert first.rewrite.path == "/$2"
    plain = build(ing(rule(None, path("/old")), annotations={"rewrite-target": "/new"}))
    rewrite = port(plain, 80).routes[0].rewrite
    assert rewrite is not None
    assert rewrite.path == "/new"
    bad = build(ing(rule(None, path("/old")), annotations={"rewrite-target": "/$3"}))
    assert bad.built.refused is not None
    assert "no group 3" in bad.built.refused


@pytest.mark.parametrize(
    ("annotation", "value", "named"),
    [
        ("ssl-redirect", "yes", "ssl-redirect"),
        ("proxy-read-timeout", "1m", "proxy-read-timeout"),
        ("whitelist-source-range", "198.18.0.0/33", "whitelist-source-range"),
        ("backend-protocol", "FCGI", "backend-protocol"),
        ("affinity", "ip", "affinity"),
        ("rewrite-target", "x", "rewrite-target"),
        ("canary-by-header", "bad header", "canary-by-header"),
    ],
)
def test_a_bad_annotation_value_refuses_the_ingress_naming_it(
    annotation: str, value: str, named: str
) -> None:
    made = build(ing(rule(None, path()), annotations={annotation: value}))
    assert not made.built.exposed
    assert made.built.refused is not None
    assert f"{NGINX}{named}" in made.built.refused
    assert made.built.listeners == ()  # nothing half-applied


def test_a_refused_ingress_keeps_what_it_was_served_with() -> None:
    good = build(ing(rule(None, path())))
    before = Previous(listeners={li.name: li for li in good.built.listeners},
                      load_balancer=good.built.dedicated)  # fmt: skip
    made = build(ing(rule(None, path("/x")), annotations={"affinity": "ip"}), previous=before)
    assert made.built.refused
    assert made.built.listeners == good.built.listeners


def test_unsupported_annotations_are_named_in_one_warning_and_snippets_never_run() -> None:
    made = build(ing(rule(None, path()), annotations={
        "configuration-snippet": "more_set_headers 'x: y';", "auth-url": "http://auth",
        "ssl-redirect": "true",
    }))  # fmt: skip
    warnings = [e for e in made.built.events if e.reason == "UnsupportedAnnotation"]
    assert len(warnings) == 1
    assert f"{NGINX}auth-url" in warnings[0].message
    assert f"{NGINX}configuration-snippet" in warnings[0].message
    assert "ssl-redirect" not in warnings[0].message
    assert made.built.exposed
    assert "snippet" not in repr(made.built.listeners)


def test_the_readme_table_names_every_annotation_honoured() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [name for name in ANNOTATIONS if f"`{name}`" not in readme]
    assert not missing


def test_a_canary_joins_its_namespaces_ingress_by_weight_and_by_header() -> None:
    canary = ing(rule("shop.example.test", path("/", to="web-next")), name="shop-canary",
                 annotations={"canary": "true", "canary-weight": "20",
                              "canary-by-header": "X-Canary"})  # fmt: skip
    assert not build(canary).built.exposed  # it has no instance of its own
    made = build(ing(rule("shop.example.test", path("/"), path("/other"))), canaries=[canary])
    routes = [summary(r) for r in port(made, 80).routes]
    assert made.canaries == ("shop/shop-canary",)
    always, never = port(made, 80).routes[1:3]
    assert routes[1][2] == (("shop/web-next", 80, 1),)
    assert [(h.name, h.value) for h in always.headers] == [("x-canary", "always")]
    assert routes[2][2] == (("shop/web", 80, 1),)  # `never` keeps a request off it
    assert [(h.name, h.value) for h in never.headers] == [("x-canary", "never")]
    assert routes[3][2] == (("shop/web", 80, 80), ("shop/web-next", 80, 20))
    assert routes[0][1] == "/other"
    assert routes[0][2] == (("shop/web", 80, 1),)


def test_ssl_passthrough_sends_each_hosts_tls_to_its_root_paths_backend() -> None:
    made = build(ing(
        rule("shop.example.test", path("/api", to="api", port="grpc"), path("/", to="web")),
        rule("api.example.test", path("/v1", to="api", port=50051)),
        rule(None, path("/", to="web")),  # no host: no server name to route by
        annotations={"ssl-passthrough": "true", "affinity": "cookie", "limit-rps": "9"},
        tls=[{"hosts": ["shop.example.test"], "secretName": "unused"}],
    ))  # fmt: skip
    tls = port(made, 443)
    assert tls.protocol is Protocol.TLS
    assert tls.certificates == ()
    assert [(r.hosts, [(t.service, t.target_port) for t in r.forward_to]) for r in tls.routes] == [
        (("shop.example.test",), [("shop/web", 80)]),
        (("api.example.test",), [("shop/api", 50051)]),
    ]
    assert made.built.certificates == ()
    assert port(made, 80).protocol is Protocol.HTTP  # HTTP is still read on port 80


def test_canaries_by_header_pattern_and_by_cookie_come_before_the_weight() -> None:
    canary = ing(
        rule("shop.example.test", path("/", to="web-next")),
        name="next",
        annotations={
            "canary": "true",
            "canary-by-header": "X-Beta",
            "canary-by-header-pattern": "yes|1",
            "canary-by-cookie": "beta",
        },
    )
    made = build(ing(rule("shop.example.test", path("/"))), canaries=[canary])
    by_header, by_cookie, main, _ = port(made, 80).routes
    assert [(h.name, h.type.value, h.value) for h in by_header.headers] == [
        ("x-beta", "regex", "yes|1")
    ]
    ((name, kind, value),) = [(h.name, h.type.value, h.value) for h in by_cookie.headers]
    assert (name, kind) == ("cookie", "regex")
    assert re.fullmatch(value, "a=1; beta=always; c=2")
    assert re.fullmatch(value, "beta=always")
    assert not re.fullmatch(value, "notbeta=always")
    assert [t.service for t in by_cookie.forward_to] == ["shop/web-next"]
    assert [t.service for t in main.forward_to] == ["shop/web"]  # no weight asked


def test_an_implementation_specific_path_keeps_its_match_when_redirected_to_https() -> None:
    made = build(ing(rule("shop.example.test", path("/app", "ImplementationSpecific")),
                     annotations={"force-ssl-redirect": "true"}))  # fmt: skip
    first = port(made, 80).routes[0]
    assert (first.path_prefix, first.redirect is not None) == ("/app", True)
