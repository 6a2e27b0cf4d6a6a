"""What the page modules share: reading forms, showing errors by field, dates."""

from __future__ import annotations

import datetime
from typing import Any

from flask import abort, request


def datetime_filter(at: float) -> str:
    """The `datetime` template filter: a Unix time as UTC, to the second."""
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


def form_int(value: str | None, field: str, default: int = 0) -> int:
    """A whole number from a form or query field; anything else is a 400 naming the field
    (never a 500)."""
    text = (value or "").strip()
    if not text:
        return default
    if not text.isdigit() or len(text) > 18:
        abort(400, description=f"{field}: must be a whole number (got {text[:40]!r})")
    return int(text)
