"""The Gateway API status writer (`cmi.k8s.writer.GatewayWriter`): only a change is written,
and a condition that did not change keeps its transition time; the reporter never drops a
Gateway's full report for a status-only one."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cmi.build import Built
from cmi.k8s.client import KubeClient
from cmi.k8s.writer import GatewayWriter
from cmi.report import Reporter
from slb.readiness import Readiness


class Recorder:
    """Records the requests a writer makes (the writer's logic alone is under test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((method, path, kw.get("body")))
        return {}


def condition(type_: str, status: str, reason: str, when: str = "") -> dict[str, Any]:
    out = {"type": type_, "status": status, "reason": reason, "message": "",
           "observedGeneration": 2}  # fmt: skip
    return {**out, "lastTransitionTime": when} if when else out


BODY = {
    "metadata": {"namespace": "shop", "name": "edge", "generation": 2},
    "status": {"conditions": [condition("Accepted", "True", "Accepted", "2026-01-01T00:00:00Z"),
                              condition("Programmed", "False", "Pending", "2026-01-01T00:00:00Z")]},
}  # fmt: skip


def test_an_unchanged_status_is_not_written() -> None:
    client = Recorder()
    same = {"conditions": [condition("Accepted", "True", "Accepted"),
                           condition("Programmed", "False", "Pending")]}  # fmt: skip
    assert not GatewayWriter(cast(KubeClient, client)).set_status("gateways", BODY, same)
    assert client.calls == []


def test_a_change_is_written_and_the_unchanged_condition_keeps_its_time() -> None:
    client = Recorder()
    new = {"conditions": [condition("Accepted", "True", "Accepted"),
                          condition("Programmed", "True", "Programmed")],
           "addresses": [{"type": "IPAddress", "value": "198.18.0.7"}]}  # fmt: skip
    assert GatewayWriter(cast(KubeClient, client)).set_status("gateways", BODY, new)
    ((method, path, body),) = client.calls
    assert method == "PATCH"
    assert path == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/edge/status"
    accepted, programmed = body["status"]["conditions"]
    assert accepted["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert programmed["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert body["status"]["addresses"] == new["addresses"]


class Jobs:
    """The report queue's one rule: the last job submitted for a key replaces one waiting."""

    def __init__(self) -> None:
        self.waiting: dict[str, Callable[[], None]] = {}

    def submit(self, key: str, job: Callable[[], None]) -> None:
        self.waiting[key] = job

    def run(self) -> None:
        jobs, self.waiting = self.waiting, {}
        for job in jobs.values():
            job()


def test_a_readiness_change_never_drops_a_gateways_waiting_full_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateways = SimpleNamespace(built={"gateway:shop/edge": object()},
                               gateways={"shop/edge": BODY})  # fmt: skip
    reporter = Reporter(cast(KubeClient, Recorder()), cast(Any, None), cast(Any, None),
                        cast(Any, gateways))  # fmt: skip
    reporter.queue.close(wait=False)
    jobs = Jobs()
    monkeypatch.setattr(reporter, "queue", jobs)
    done: list[str] = []
    monkeypatch.setattr(reporter, "_report_gateway", lambda key, *_: done.append(f"full {key}"))
    monkeypatch.setattr(reporter, "_write_gateway_status",
                        lambda key, *_: done.append(f"status {key}"))  # fmt: skip

    key = "gateway:shop/edge"
    reporter.written(key, Built(key, exposed=True), {})
    reporter.readiness({key: Readiness("served", "live")})  # before the report ran
    jobs.run()
    assert done == [f"full {key}"]  # it writes Programmed too, from the readiness told
    reporter.readiness({key: Readiness("error", "refused")})
    jobs.run()
    assert done == [f"full {key}", f"status {key}"]
