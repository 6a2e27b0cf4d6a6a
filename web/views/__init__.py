"""Server-rendered pages: status, listeners, instances, Services, certificates, audit, access.

Pages render from the same queries as the API and write through the same operations;
htmx swaps in the parts that change (the selector preview, live status) without a build.
"""

from __future__ import annotations

import datetime
from typing import Any

from flask import Blueprint, request

bp = Blueprint("pages", __name__)


@bp.app_template_filter("datetime")
def datetime_filter(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def form_data(*skip: str) -> dict[str, Any]:
    """The submitted form without the CSRF token, empty fields left out."""
    return {
        k: v
        for k, v in request.form.items()
        if k != "csrf_token" and k not in skip and v.strip() != ""
    }


def errors_by_field(exc: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for error in exc.errors:
        out.setdefault(error.field, []).append(error.message)
    return out


from web.views import access, certificates, instances, listeners, overview  # noqa: E402, F401
