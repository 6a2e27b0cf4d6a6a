"""Status at a glance over the API: the desired revision, every node's report, listener states."""

from __future__ import annotations

from dataclasses import asdict

from flask import Response, jsonify

from web import queries
from web.api.common import READ, ApiBlueprint

bp = ApiBlueprint("api_status", __name__, tag="status")


@bp.operation(
    "/status", "GET", summary="Desired revision, every node's report, listeners by state",
    role=READ, ok=(200, "Status"),
)  # fmt: skip
def status() -> Response:
    view = queries.current()
    counts = {"served": 0, "pending": 0, "error": 0}
    for state in view.states.values():
        counts[state.state] += 1
    nodes = []
    for tier, board in (("l4", view.boards.l4), ("l7", view.boards.l7)):
        for name, report in sorted(board.items()):
            nodes.append({**asdict(report), "tier": tier, "node": name})
    return jsonify({"revision": view.revision, "listeners": counts, "nodes": nodes})
