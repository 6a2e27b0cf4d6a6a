"""Listener pages: the list, the form with its live selector preview, and the detail."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from slb.model import Certificate, Listener, LoadBalancer, ModelError, OwnerKind, Scheduler
from slb.storage.store import ConflictError
from web import queries
from web.auth import Role, require
from web.db import operations
from web.queries import PROTOCOLS, STATES, ListenerFilter
from web.state import listener_backends, preview
from web.views.common import errors_by_field, form_int

bp = Blueprint("listeners", __name__)

PageResult = str | Response | tuple[str, int]


def _choices() -> dict[str, Any]:
    snapshot = queries.current().snapshot
    return {
        "load_balancers": sorted(snapshot.of(LoadBalancer)),
        "certificates": sorted(snapshot.of(Certificate)),
        "protocols": PROTOCOLS,
        "schedulers": [s.value for s in Scheduler],
    }


@bp.get("/listeners")
def listeners() -> str:
    view = queries.current()
    which = ListenerFilter(
        q=request.args.get("q", "").strip(),
        load_balancer=request.args.get("load_balancer", ""),
        protocol=request.args.get("protocol", ""),
        owner=request.args.get("owner", ""),
        state=request.args.get("state", ""),
    )
    found = queries.listeners(view, which)
    size = 50
    pages = max(1, -(-len(found) // size))
    try:
        page = min(max(1, int(request.args.get("page", "1"))), pages)
    except ValueError:
        page = 1
    rows = [(s, view.states[s.obj.name]) for s in found[(page - 1) * size : page * size]]
    return render_template(
        "listeners.html", rows=rows, total=len(found), page=page, pages=pages, which=which,
        states=STATES, protocols=PROTOCOLS, revision=view.revision,
        load_balancers=sorted(view.snapshot.of(LoadBalancer)),
    )  # fmt: skip


def form_to_listener(form: dict[str, str]) -> dict[str, Any]:
    """The listener form's flat fields as the model's nested document.

    Values stay strings where the model converts them, so a bad number is reported by the
    model with its field name, exactly as the API reports it.
    """
    data: dict[str, Any] = {}
    for key in ("name", "load_balancer", "protocol", "port", "scheduler", "forwarding",
                "idle_timeout_s", "request_timeout_s", "backend_protocol"):  # fmt: skip
        if form.get(key, "").strip():
            data[key] = form[key].strip()
    if form.get("access_log"):  # a checkbox: present only when ticked
        data["access_log"] = True
    target = form.get("target_port", "").strip()
    if target:
        data["target_port"] = int(target) if target.isdigit() else target
    selector = form.get("selector", "").strip()
    if selector:
        data["selector"] = queries.parse_selector(selector)
    hc_type = form.get("hc_type", "tcp")
    if hc_type == "none":
        data["health_check"] = None
    else:
        check: dict[str, Any] = {"type": hc_type}
        for key in ("path", "expected_codes", "grpc_service", "interval_s", "timeout_s",
                    "healthy_threshold", "unhealthy_threshold"):  # fmt: skip
            if form.get(f"hc_{key}", "").strip():
                check[key] = form[f"hc_{key}"].strip()
        data["health_check"] = check
    persistence: dict[str, Any] = {"mode": form.get("persistence_mode", "none")}
    if form.get("persistence_timeout_s", "").strip():
        persistence["timeout_s"] = form["persistence_timeout_s"].strip()
    if form.get("cookie_name", "").strip():
        persistence["cookie_name"] = form["cookie_name"].strip()
    data["persistence"] = persistence
    data["certificates"] = [c for c in request.form.getlist("certificates") if c]
    return data


def listener_to_form(listener: Listener) -> dict[str, Any]:
    check = listener.health_check
    form: dict[str, Any] = {
        "name": listener.name,
        "load_balancer": listener.load_balancer,
        "protocol": listener.protocol.value,
        "port": listener.port,
        "target_port": listener.target_port,
        "scheduler": listener.scheduler.value,
        "forwarding": listener.forwarding.value,
        "selector": str(listener.selector) if listener.selector else "",
        "hc_type": check.type.value if check else "none",
        "persistence_mode": listener.persistence.mode.value,
        "persistence_timeout_s": listener.persistence.timeout_s,
        "cookie_name": listener.persistence.cookie_name or "",
        "idle_timeout_s": listener.idle_timeout_s,
        "request_timeout_s": listener.request_timeout_s,
        "access_log": listener.access_log,
        "backend_protocol": listener.backend_protocol.value if listener.backend_protocol else "",
        "certificates": list(listener.certificates),
    }
    if check:
        for key in ("path", "expected_codes", "grpc_service", "interval_s", "timeout_s",
                    "healthy_threshold", "unhealthy_threshold"):  # fmt: skip
            value = getattr(check, key)
            form[f"hc_{key}"] = "" if value is None else value
    return form


def _render_form(
    form: dict[str, Any],
    errors: dict[str, list[str]],
    editing: str | None,
    version: int | None,
    status: int = 200,
) -> tuple[str, int]:
    found = preview(
        queries.current().snapshot, str(form.get("selector", "")),
        form.get("target_port") or None, str(form.get("load_balancer", "")),
    )  # fmt: skip
    page = render_template(
        "listener_form.html", form=form, errors=errors, editing=editing, version=version,
        preview=found, **_choices(),
    )  # fmt: skip
    return page, status


@bp.route("/listeners/new", methods=["GET", "POST"])
@require(Role.OPERATOR)
def listener_new() -> PageResult:
    if request.method == "GET":
        defaults = {"protocol": "TCP", "scheduler": "rr", "forwarding": "nat", "hc_type": "tcp",
                    "persistence_mode": "none", "certificates": []}  # fmt: skip
        return _render_form(defaults, {}, None, None)
    form = {k: v for k, v in request.form.items() if k != "csrf_token"}
    form["certificates"] = request.form.getlist("certificates")  # type: ignore[assignment]
    try:
        stored = operations().add_listener(form_to_listener(form))
    except ModelError as exc:
        return _render_form(form, errors_by_field(exc), None, None, 422)
    flash(f"Listener {stored.obj.name} created at revision {stored.revision}.")
    return redirect(url_for("listeners.listener_detail", name=stored.obj.name))


@bp.route("/listeners/<name>/edit", methods=["GET", "POST"])
@require(Role.OPERATOR)
def listener_edit(name: str) -> PageResult:
    view = queries.current()
    stored = view.snapshot.of(Listener).get(name)
    if stored is None:
        abort(404)
    if stored.obj.owner.kind is OwnerKind.SERVICE:
        flash(f"Listener {name} belongs to Service {stored.obj.owner.name}: change the Service.",
              "error")  # fmt: skip
        return redirect(url_for("listeners.listener_detail", name=name))
    if request.method == "GET":
        return _render_form(listener_to_form(stored.obj), {}, name, stored.revision)
    form = {k: v for k, v in request.form.items() if k != "csrf_token"}
    form["certificates"] = request.form.getlist("certificates")  # type: ignore[assignment]
    version = form_int(form.pop("version", None), "version")
    try:
        data = form_to_listener(form)
        data.pop("name", None)
        updated = operations().update_listener(name, data, expect=version)
    except ModelError as exc:
        return _render_form(form, errors_by_field(exc), name, version, 422)
    except ConflictError:
        message = ("Someone else changed this listener since you opened it. "
                   "Your changes were not saved: reload to see theirs.")  # fmt: skip
        return _render_form(form, {"version": [message]}, name, version, 409)
    flash(f"Listener {name} updated at revision {updated.revision}.")
    return redirect(url_for("listeners.listener_detail", name=name))


@bp.post("/listeners/<name>/delete")
@require(Role.OPERATOR)
def listener_delete(name: str) -> Response:
    version = form_int(request.form.get("version"), "version")
    try:
        operations().remove_listener(name, expect=version)
    except ModelError as exc:
        flash(str(exc), "error")
        return redirect(url_for("listeners.listener_detail", name=name))
    except ConflictError:
        flash("The listener changed since you opened it; nothing was deleted.", "error")
        return redirect(url_for("listeners.listener_detail", name=name))
    flash(f"Listener {name} deleted.")
    return redirect(url_for("listeners.listeners"))


@bp.get("/listeners/preview")
def listener_preview() -> str:
    """The htmx fragment under the selector field, redrawn as the operator types."""
    target = request.args.get("target_port", "").strip()
    port: int | str | None = int(target) if target.isdigit() else (target or None)
    found = preview(
        queries.current().snapshot, request.args.get("selector", ""), port,
        request.args.get("load_balancer", ""),
    )  # fmt: skip
    return render_template("_preview.html", preview=found)


def _detail_context(name: str) -> dict[str, Any]:
    view = queries.current()
    stored = view.snapshot.of(Listener).get(name)
    if stored is None:
        abort(404)
    return {"stored": stored, "listener": stored.obj, "state": view.states[name],
            "revision": view.revision}  # fmt: skip


@bp.get("/listeners/<name>")
def listener_detail(name: str) -> str:
    context = _detail_context(name)
    view = queries.current()
    backends = listener_backends(view.snapshot, context["listener"])
    envoys = queries.envoy_hosts(view, name) if context["listener"].protocol.is_l7 else None
    return render_template(
        "listener_detail.html", backends=backends, envoys=envoys,
        can_edit=g.user.can(Role.OPERATOR), **context,
    )  # fmt: skip


@bp.get("/listeners/<name>/status")
def listener_status(name: str) -> str:
    """The htmx fragment with the listener's live status on each node."""
    return render_template("_listener_status.html", **_detail_context(name))
