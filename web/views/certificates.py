"""Certificates: upload a chain and key (checked as a pair), see what is in them, delete."""

from __future__ import annotations

import datetime

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from slb.certificates import EXPIRY_WARNING_DAYS
from slb.model import Certificate, ModelError
from slb.storage.store import ConflictError
from web import queries
from web.auth import Role, require
from web.db import operations
from web.views.common import errors_by_field, form_int

bp = Blueprint("certificates", __name__)


def _page(
    errors: dict[str, list[str]] | None = None, name: str = "", status: int = 200
) -> tuple[str, int]:
    view = queries.current()
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for _, stored in sorted(view.snapshot.of(Certificate).items()):
        info = queries.certificate_info(stored)
        rows.append((stored, info, info.days_left(now)))
    page = render_template(
        "certificates.html", rows=rows, errors=errors or {}, name=name,
        warn_days=EXPIRY_WARNING_DAYS,
    )  # fmt: skip
    return page, status


@bp.get("/certificates")
def certificates() -> tuple[str, int]:
    return _page()


def _uploaded(field: str) -> str:
    """A PEM from the file input if one was chosen, else from the text area."""
    upload = request.files.get(f"{field}_file")
    if upload is not None and upload.filename:
        data: bytes = upload.read(256 * 1024 + 1)
        return data.decode("utf-8", errors="replace")
    return str(request.form.get(field, ""))


@bp.post("/certificates")
@require(Role.OPERATOR)
def certificate_upload() -> tuple[str, int] | Response:
    name = request.form.get("name", "").strip()
    chain_pem, key_pem = _uploaded("chain_pem"), _uploaded("key_pem")
    problems: dict[str, list[str]] = {}
    for field, value in (("name", name), ("chain_pem", chain_pem), ("key_pem", key_pem)):
        if not value.strip():
            problems[field] = ["required"]
    if problems:
        return _page(problems, name, 422)
    version = form_int(request.form.get("version"), "version")
    try:
        stored, info = operations().put_certificate(name, chain_pem, key_pem, expect=version)
    except ModelError as exc:
        return _page(errors_by_field(exc), name, 422)
    except ConflictError:
        return _page({"name": ["a certificate with this name exists"]}, name, 409)
    days = info.days_left()
    message = f"Certificate {stored.obj.name} saved: {info.subject}, {days} days left."
    if info.expires_soon():
        message += f" It expires in under {EXPIRY_WARNING_DAYS} days: plan its renewal."
    flash(message, "warning" if info.expires_soon() else "info")
    return redirect(url_for("certificates.certificates"))


@bp.post("/certificates/<name>/delete")
@require(Role.OPERATOR)
def certificate_delete(name: str) -> tuple[str, int] | Response:
    version = form_int(request.form.get("version"), "version")
    try:
        operations().remove_certificate(name, expect=version)
    except ModelError as exc:
        return _page({"delete": [e.message for e in exc.errors]}, "", 422)
    except ConflictError:
        return _page({"delete": ["the certificate changed; reload and retry"]}, "", 409)
    flash(f"Certificate {name} deleted.")
    return redirect(url_for("certificates.certificates"))
