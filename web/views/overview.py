"""Status at a glance, and the audit trail."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from flask import Blueprint, render_template, request

from slb.model import Listener
from slb.storage.audit import AuditLog
from slb.storage.status import BEAT_S, StatusBoard
from web import queries
from web.db import get_store

bp = Blueprint("overview", __name__)


@bp.get("/")
def index() -> str:
    view = queries.current()
    counts = {"served": 0, "pending": 0, "error": 0}
    for state in view.states.values():
        counts[state.state] += 1
    attention = [
        (view.snapshot.of(Listener)[name], state)
        for name, state in sorted(view.states.items())
        if state.state != "served"
    ][:25]
    nodes = [
        (tier, report)
        for tier, board in (("l4", view.boards.l4), ("l7", view.boards.l7))
        for _, report in sorted(board.items())
    ]
    return render_template(
        "index.html", revision=view.revision, counts=counts, attention=attention, nodes=nodes,
        **_controller(),
    )  # fmt: skip


@bp.get("/status/controller")
def controller_fragment() -> str:
    """The htmx fragment saying whether a cmi leads, refreshed on the status page."""
    return render_template("_controller.html", **_controller())


SILENT_AFTER_S = 5 * BEAT_S
"""A leader that has not beaten for this long is shown as silent (it beats every 2 s)."""


def _controller() -> dict[str, Any]:
    """cmi's beat, and the consumers that hold their last good state (`slb.integrity`)."""
    board = StatusBoard(get_store())
    beat = board.controller()
    age = beat.age() if beat else 0.0
    return {"controller": beat, "controller_age": round(age),
            "controller_alive": beat is not None and age < SILENT_AFTER_S,
            "alarms": board.alarms()}  # fmt: skip


@bp.get("/status/nodes")
def nodes_fragment() -> str:
    """The htmx fragment of every node's report, refreshed on the status page."""
    view = queries.current()
    nodes = [
        (tier, report)
        for tier, board in (("l4", view.boards.l4), ("l7", view.boards.l7))
        for _, report in sorted(board.items())
    ]
    return render_template("_nodes.html", revision=view.revision, nodes=nodes)


@bp.get("/audit")
def audit() -> str:
    match = {
        f: request.args[f].strip() for f in AuditLog.FILTERS if request.args.get(f, "").strip()
    }
    entries = AuditLog(get_store()).entries(limit=200, **match)
    rows = [
        {
            **asdict(e),
            "before_json": json.dumps(e.before, indent=1, sort_keys=True) if e.before else "",
            "after_json": json.dumps(e.after, indent=1, sort_keys=True) if e.after else "",
            "changed": _changed(e.before, e.after),
        }
        for e in entries
    ]
    return render_template("audit.html", rows=rows, match=match, filters=AuditLog.FILTERS)


def _changed(before: dict[str, object] | None, after: dict[str, object] | None) -> list[str]:
    """Top-level fields that differ, for a one-line summary."""
    if before is None or after is None:
        return []
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
