"""Golden files: expected outputs kept as JSON next to their inputs, reviewed like code.

`pytest --update-golden` rewrites the expected files from what the code produces now
and deletes expected files the code no longer produces; without it, a test fails on any
difference, missing file or stale file. Review the diff before committing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files from the current output and delete stale ones",
    )


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


class Golden:
    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, directory: Path, outputs: dict[str, Any], inputs: tuple[str, ...]) -> None:
        """Compare (or rewrite) `directory/NAME` for each output; other files are stale.

        `inputs` are the file names in `directory` that are not outputs.
        """
        known = set(inputs) | set(outputs)
        stale = {p.name for p in directory.glob("*.json") if p.name not in known}
        if self.update:
            for name in stale:
                (directory / name).unlink()
            for name, value in outputs.items():
                path = directory / name
                text = dumps(value)
                if not path.exists() or path.read_text() != text:
                    path.write_text(text)
            return
        assert not stale, f"stale golden files in {directory}: {sorted(stale)} (--update-golden)"
        for name, value in outputs.items():
            path = directory / name
            assert path.exists(), f"{path} is missing (run pytest --update-golden and review)"
            assert json.loads(path.read_text()) == json.loads(dumps(value)), (
                f"{path} differs from the output (run pytest --update-golden and review the diff)"
            )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(bool(request.config.getoption("--update-golden")))
