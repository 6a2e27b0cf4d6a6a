"""Security: issue #14's attack table, each row tried by the tests that play it against real
components (kube-apiserver and cmi, Redis, the console in waitress or Flask's client, Celery
workers, the xDS translation), and schemathesis over the whole API as every role.

An attack succeeds if any of its tests fails. Rows the code does not defend yet are listed
as not tried, never counted as defended.

    .venv/bin/python -m bench.security
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import results_file

REPO = Path(__file__).resolve().parent.parent

ATTACKS: dict[str, list[str]] = {
    "cross-namespace join": [
        "tests/cmi/test_controller.py::test_another_namespace_cannot_join_a_tenants_instance",
        "tests/cmi/test_build.py::test_a_service_joins_only_an_instance_its_namespace_may_use",
        "tests/cmi/test_controller.py::test_a_namespace_joins_by_its_labels_and_leaves_when_relabelled",
        "tests/cmi/test_build.py::test_a_namespace_joins_by_its_labels_and_a_served_service_waits_for_unknown_ones",
        "tests/slb/test_model.py::test_a_namespace_selector_admits_by_labels_and_never_on_unknown_ones",
    ],
    "look-alike Service in an operator's selector": [
        "tests/slb/test_resolve.py::test_a_selector_picks_only_services_of_namespaces_the_instance_admits",
        "tests/web/test_state.py::test_the_console_shows_only_the_services_the_instance_admits",
    ],
    "a namespace past its quota": [
        "tests/cmi/test_controller.py::test_a_namespace_owns_at_most_its_quota_of_listeners",
        "tests/web/test_api.py::test_an_operator_making_instances_for_a_namespace_is_held_to_its_quota",
    ],
    "port theft by an old Service": [
        "tests/cmi/test_steps.py::test_the_instances_owner_and_the_first_claim_win_not_creation_timestamps",
    ],
    "certificate use without a grant": [
        "tests/l7/test_translate.py::test_golden[https-tenants]",
        "tests/l7/test_translate.py::test_golden[https-tenant-selector]",
    ],
    "hash collision overwrite": [
        "tests/cmi/test_controller.py::test_a_service_never_overwrites_an_object_another_owner_holds",
        "tests/cmi/test_build.py::test_generated_names_carry_64_bits_of_hash",
    ],
    "hand-made EndpointSlice to the API server": [
        "tests/cmi/test_controller.py::test_a_hand_made_endpointslice_cannot_point_a_vip_elsewhere",
    ],
    "forged status entry": [
        "tests/slb/test_status.py",
        "tests/web/test_pages.py::test_a_forged_status_report_never_breaks_a_page",
        "tests/slb/test_redis_acl.py::test_a_node_writes_its_own_keys_and_no_other_nodes",
    ],
    "remote control shutdown": [
        "tests/slb/test_redis_acl.py::test_the_control_worker_runs_and_no_one_controls_it_remotely",
    ],
    "L4 node reading a key": [
        "tests/slb/test_redis_acl.py::test_only_the_xds_server_reads_private_keys",
    ],
    "private key read from a copy of Redis": [
        "tests/slb/test_secrets.py::test_with_a_key_file_redis_holds_no_key_material",
        "tests/slb/test_secrets.py::test_a_value_moved_to_another_ref_does_not_decrypt",
        "tests/web/test_keys_at_rest.py::test_an_uploaded_key_is_stored_encrypted",
    ],
    "plaintext xDS on a public bind": [
        "tests/l7/test_mtls.py::test_plaintext_on_a_public_bind_needs_an_explicit_flag",
    ],
    "login lockout of admin": [
        "tests/web/test_sessions.py::test_failures_from_one_address_never_lock_the_user_out_elsewhere",
        "tests/web/test_sessions.py::test_each_further_failure_doubles_the_wait",
    ],
    "replayed cookie after logout": [
        "tests/web/test_sessions.py::test_a_cookie_replayed_after_sign_out_is_refused",
        "tests/web/test_sessions.py::test_a_password_change_and_sign_out_everywhere_end_the_other_sessions",
    ],
    "child token after parent revoked": [
        "tests/web/test_sessions.py::test_a_token_made_with_a_token_dies_with_it",
    ],
    "operator claiming the gateway address": [
        "tests/web/test_api.py::test_an_operator_cannot_claim_the_gateway_or_any_address_as_a_vip",
        "tests/cmi/test_ipam.py::test_reserved_addresses_are_never_a_vip",
    ],
    "VIP:9902 from a client": [
        "tests/l7/test_node_ports.py",
        "tests/l4/test_guard.py",
    ],
    "zone-id VIP": [
        "tests/slb/test_model.py::test_a_vip_is_one_clients_can_reach_in_one_spelling",
        "tests/web/test_pages.py::test_instances_and_pools_pages",
    ],
    "forged X-Forwarded-For": ["tests/web/test_proxy.py"],
    "CR/LF health path": [
        "tests/slb/test_model.py::test_a_health_check_path_cannot_end_the_request_line",
        "tests/slb/test_model.py::test_a_final_newline_is_no_loophole",
    ],
}
NOT_YET: dict[str, str] = {}
"""Rows of the table the code does not defend yet, and why (none now)."""
API_SWEEP = "tests/web/test_openapi.py::test_no_role_gets_a_server_error"


@dataclass(eq=False)  # a plugin must hash by identity
class Outcomes:
    """A pytest plugin: each test's outcome, and what it recorded."""

    failed: set[str] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.ran.add(report.nodeid)
        if report.failed:
            self.failed.add(report.nodeid)
        if report.when == "call":
            self.properties[report.nodeid] = dict(report.user_properties)


def main() -> int:
    outcomes = Outcomes()
    targets = sorted({t for tests in ATTACKS.values() for t in tests} | {API_SWEEP})
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), *targets],
                       plugins=[outcomes])  # fmt: skip
    rows: list[dict[str, Any]] = []
    for attack, tests in ATTACKS.items():
        ran = {n for n in outcomes.ran if any(n.startswith(t) for t in tests)}
        broke = any(n.startswith(t) for n in outcomes.failed for t in tests)
        rows.append({"attack": attack, "tests": len(ran), "succeeded": broke or not ran})
    sweeps = {n: p for n, p in outcomes.properties.items() if n.startswith(API_SWEEP)}
    api_5xx = sum(int(p.get("api_5xx", 0)) for p in sweeps.values())
    requests = sum(int(p.get("api_requests", 0)) for p in sweeps.values())
    if len(sweeps) < 3 or any(n.startswith(API_SWEEP) for n in outcomes.failed):
        api_5xx = max(api_5xx, 1)  # a sweep that did not finish proves nothing
    tried = len(rows)
    succeeded = sum(1 for row in rows if row["succeeded"])
    for row in rows:
        verdict = "SUCCEEDED" if row["succeeded"] else "defended"
        print(f"{row['attack']:45s} {verdict:10s} ({row['tests']} test(s))")
    for attack, why in NOT_YET.items():
        print(f"{attack:45s} {'not tried':10s} ({why})")
    print(f"API sweep: {requests} requests as {len(sweeps)} roles, {api_5xx} answered 5xx")
    path = results_file.write(
        "security",
        {
            "attacks_tried": {"value": tried, "unit": "attacks", "target": 17},
            "attacks_succeeded": {"value": succeeded, "unit": "attacks", "target": 0},
            "api_5xx": {"value": api_5xx, "unit": "responses", "target": 0},
            "api_requests": {"value": requests, "unit": "requests", "target": None},
        },
        rows=rows,
        not_tried=NOT_YET,
        pytest_exit_code=int(code),
    )
    print(f"wrote {path}")
    return 0 if succeeded == 0 and api_5xx == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
