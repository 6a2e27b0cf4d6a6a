"""schemathesis against the served OpenAPI document: no 5xx, every response as documented.

The app runs in waitress on a loopback port with real Redis holding an instance, a pool,
labelled Services, a listener and a certificate, so generated requests hit real objects
as well as missing ones; requests carry an admin token, so every operation is reachable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devbed.pki import chain
from devbed.redis import RedisServer
from slb.model import Service
from slb.operations import Operations
from slb.storage.store import Store
from tests.web.conftest import make_app
from tests.web.serve import ServedApp
from web.api.openapi import document, registered_operations
from web.auth import Accounts, Role

EXAMPLES = 15
"""Generated requests per operation and mode: enough to find 5xx, bounded for two cores."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    store = Store(redis_server.client(), prefix="schemathesis")
    accounts = Accounts(store)
    accounts.create_user("root", "correct horse battery", Role.ADMIN)
    user = accounts.user("root")
    assert user is not None
    _, secret = accounts.create_token(user, "schemathesis")
    ops = Operations(store, actor="seed")
    ops.put_pool({"name": "default", "cidrs": ["198.18.0.0/24"]})
    ops.add_load_balancer({"name": "public", "vip": "198.18.0.10"})
    for i in range(3):
        store.put(Service.model_validate(
            {"namespace": "shop", "name": f"svc{i}", "labels": {"app": "shop", "i": str(i)},
             "load_balancer": "public", "ports": [{"name": "http", "port": 80}],
             "backends": {"http": [{"address": f"198.18.10.{i + 1}", "port": 8080}]}}
        ))  # fmt: skip
    listener = {"name": "web", "load_balancer": "public", "protocol": "HTTP", "port": 80,
                "selector": {"match_labels": {"app": "shop"}}, "target_port": "http"}  # fmt: skip
    ops.add_listener(listener)
    pair = chain()
    ops.put_certificate("shop", pair.chain_pem, pair.key_pem, expect=0)
    for role in Role:  # a user per role, for the server-error sweep
        accounts.create_user(role.label, "correct horse battery", role)
        member = accounts.user(role.label)
        assert member is not None
        _, ROLE_TOKENS[role.label] = accounts.create_token(member, "schemathesis")
    app = make_app(redis_server, store, tmp_path_factory.mktemp("schemathesis"))
    with ServedApp(app, threads=4) as server:
        yield server.url, {"Authorization": f"Bearer {secret}"}


ROLE_TOKENS: dict[str, str] = {}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_document(
    served: tuple[str, dict[str, str]], mode: GenerationMode
) -> None:
    """Every operation, with generated valid (positive) and invalid (negative) requests."""
    url, headers = served
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json", headers=headers)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        )  # fmt: skip
        def run(case: Any) -> None:
            case.call_and_validate(base_url=f"{url}/api/v1", headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("role", [r.label for r in Role])
def test_no_role_gets_a_server_error(
    served: tuple[str, dict[str, str]], role: str, record_property: Any
) -> None:
    """Every operation as each role, valid and invalid requests: a 403, a 4xx naming the
    field, never a 5xx (#14: `api_5xx` in bench/results/security.json)."""
    url, _ = served
    headers = {"Authorization": f"Bearer {ROLE_TOKENS[role]}"}
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json", headers=headers)
    server_errors: list[str] = []
    sent = 0
    for operation in (result.ok() for result in schema.get_all_operations()):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES // 3, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
            )  # fmt: skip
            def run(case: Any) -> None:
                nonlocal sent
                response = case.call(base_url=f"{url}/api/v1", headers=headers)
                sent += 1
                if response.status_code >= 500:
                    server_errors.append(f"{case.operation.label}: {response.status_code}")

            run()
    record_property("api_requests", sent)
    record_property("api_5xx", len(server_errors))
    assert sent > 100
    assert not server_errors, server_errors[:20]


def test_the_document_is_served_and_complete(served: tuple[str, dict[str, str]]) -> None:
    url, headers = served
    document = requests.get(f"{url}/api/v1/openapi.json", headers=headers, timeout=10).json()
    assert document["openapi"].startswith("3.1")
    paths = set(document["paths"])
    for path in ("/listeners", "/listeners/{name}", "/load-balancers", "/pools/{name}",
                 "/certificates", "/selector-preview", "/status", "/audit", "/tokens"):  # fmt: skip
        assert path in paths
    listener = document["components"]["schemas"]["ListenerCreate"]
    assert "owner" not in listener["properties"]
    assert listener["properties"]["port"]["maximum"] == 65535
    unauthenticated = requests.get(f"{url}/api/v1/openapi.json", timeout=10)
    assert unauthenticated.status_code == 401


def test_the_document_describes_every_route_the_api_serves(app: Flask) -> None:
    """The factory registers API blueprints one by one: none may be served undocumented."""
    served = {
        (re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule.removeprefix("/api/v1")), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    paths = document(registered_operations(app))["paths"]
    documented = {(path, method.upper()) for path, item in paths.items() for method in item}
    assert served == documented
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_static_files_need_no_login(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, _ = served
    assert requests.get(f"{url}/static/console.css", timeout=10).status_code == 200
    assert requests.get(f"{url}/login", timeout=10).status_code == 200
    assert requests.get(f"{url}/", timeout=10, allow_redirects=False).status_code == 302
