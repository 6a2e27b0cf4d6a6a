"""Run tests marked `lab` inside the lab VM, all of them in one boot.

On the host, each `lab` test is replaced at collection by a stand-in with the same
node id. The first stand-in to run boots the VM once and runs every `lab` test there
with pytest (the guest sees this checkout and virtual environment through the shared
root); each stand-in then passes, fails or skips exactly as its test did in the guest,
with the guest's report. Inside the guest (OPENSLB_LAB_GUEST=1) tests run normally.
"""

from __future__ import annotations

import os
import shlex
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devbed.labvm import LabVM

IN_GUEST = os.environ.get("OPENSLB_LAB_GUEST") == "1"


@dataclass(frozen=True)
class GuestOutcome:
    outcome: str  # passed, failed, skipped
    text: str


class GuestTestError(Exception):
    pass


class _Terminal:
    """A stream that writes the guest's lines through pytest's terminal reporter."""

    def __init__(self, config: pytest.Config) -> None:
        self._reporter = config.pluginmanager.get_plugin("terminalreporter")
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if self._reporter is not None:
                self._reporter.write_line(f"  [lab] {line}")
        return len(text)

    def flush(self) -> None:
        pass


GUEST_RUN_TIMEOUT_S = 1800
"""Boot plus every lab test; the stand-in that waits for it gets this and a minute more."""


class LabRunner:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.nodeids: list[str] = []
        self._results: dict[str, GuestOutcome] | None = None
        self._transcript = ""

    def result(self, nodeid: str) -> GuestOutcome:
        if self._results is None:
            self._results = self._run_all()
        found = self._results.get(nodeid)
        if found is None:
            return GuestOutcome(
                "failed", f"no result from the lab VM; its output:\n{self._transcript}"
            )
        return found

    def _run_all(self) -> dict[str, GuestOutcome]:
        root = Path(str(self.config.rootpath))
        command = shlex.join(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--tb=short",
             "--durations=10", "--junitxml=/openslb-job/out/junit.xml", *self.nodeids]
        )  # fmt: skip
        terminal = _Terminal(self.config)
        try:
            result = LabVM(memory_mb=2048).run(
                command,
                cwd=root,
                timeout=GUEST_RUN_TIMEOUT_S,
                env={"PYTHONUNBUFFERED": "1"},
                echo={"stdout": terminal, "stderr": terminal},
            )
        except Exception as exc:
            self._transcript = str(exc)
            return {}
        self._transcript = (result.stdout + result.stderr)[-6000:]
        junit = result.files.get("junit.xml")
        return _parse_junit(junit) if junit else {}


def _nodeid_key(nodeid: str) -> tuple[str, str]:
    """(junit classname, name) for a pytest node id."""
    path, *scopes, name = nodeid.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    return ".".join([module, *scopes]), name


def _parse_junit(text: str) -> dict[str, GuestOutcome]:
    outcomes: dict[tuple[str, str], GuestOutcome] = {}
    report = ET.fromstring(text)  # noqa: S314 - our own VM wrote it
    for case in report.iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, detail = "failed", (child.text or child.get("message") or "")
            elif child.tag == "skipped" and outcome == "passed":
                outcome, detail = "skipped", (child.get("message") or "")
        if key not in outcomes or outcome == "failed":
            outcomes[key] = GuestOutcome(outcome, detail)
    return {f"{c}::{n}": o for (c, n), o in outcomes.items()}


class LabItem(pytest.Item):
    """Stands in on the host for one test that runs inside the lab VM."""

    def __init__(self, *, runner: LabRunner, original: pytest.Item, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runner = runner
        self.original_location = original.location
        self.own_markers.extend(original.own_markers)
        # whichever stand-in runs first waits for the whole guest run, not for one test
        self.own_markers.insert(0, pytest.mark.timeout(GUEST_RUN_TIMEOUT_S + 60).mark)

    def runtest(self) -> None:
        classname, name = _nodeid_key(self.nodeid)
        outcome = self.runner.result(f"{classname}::{name}")
        if outcome.outcome == "failed":
            raise GuestTestError(outcome.text)
        if outcome.outcome == "skipped":
            pytest.skip(f"skipped in the lab VM: {outcome.text}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestTestError):
            return f"failed inside the lab VM:\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        path, lineno, _ = self.original_location
        return path, lineno, f"{self.name} [lab VM]"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    runner = LabRunner(config)
    for index, item in enumerate(items):
        if item.get_closest_marker("lab") is None:
            continue
        runner.nodeids.append(item.nodeid)
        parent = item.parent
        assert parent is not None
        items[index] = LabItem.from_parent(parent, name=item.name, runner=runner, original=item)
