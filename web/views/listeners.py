"""Listener pages: the list, the form with its live selector preview, the detail, and the
forwarding rules of HTTP, HTTPS and GRPC listeners (table, form, reordering)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NoReturn

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from slb.model import (
    Certificate,
    Limits,
    Listener,
    LoadBalancer,
    Method,
    ModelError,
    OwnerKind,
    RedirectCode,
    RetryOn,
    Scheduler,
    Scheme,
)
from slb.operations import Operations
from slb.snapshot import Snapshot, Stored
from slb.storage.store import ConflictError
from web import queries, rules
from web.auth import Role, require
from web.db import operations
from web.formpaths import line_error
from web.queries import PROTOCOLS, STATES, ListenerFilter
from web.state import listener_backends, preview
from web.views.common import errors_by_field, form_int

bp = Blueprint("listeners", __name__)

PageResult = str | Response | tuple[str, int]

CONFLICT = ("Someone else changed this listener since you opened it. "
            "Your changes were not saved: reload to see theirs.")  # fmt: skip


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
        data["target_port"] = rules.port_ref(target)
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
    data.update(_tls_fields(form))
    data["limits"] = {key: form[f"limits_{key}"].strip() for key in LIMIT_FIELDS
                      if form.get(f"limits_{key}", "").strip()}  # fmt: skip
    for key in ACL_FIELDS:  # one network per line, or separated by spaces or commas
        data[key] = [n for n in re.split(r"[\s,]+", form.get(key, "")) if n]
    return data


def _tls_fields(form: dict[str, str]) -> dict[str, Any]:
    """The TLS settings both ways: the policy, client certificates, the backends'."""
    data: dict[str, Any] = {"tls_policy": form.get("tls_policy") or "tls12",
                            "client_certificates": None, "backend_tls": None}  # fmt: skip
    mode = form.get("client_auth", "none")
    if mode != "none":
        names = [n for n in re.split(r"[\s,]+", form.get("client_sans", "")) if n]
        data["client_certificates"] = {"mode": mode, "ca_pem": form.get("client_ca_pem", ""),
                                       "subject_alt_names": names}  # fmt: skip
    backend = {"ca_pem": form.get("backend_ca_pem", "").strip() or None,
               "sni": form.get("backend_sni", "").strip() or None}  # fmt: skip
    if any(backend.values()):
        data["backend_tls"] = backend
    return data


ACL_FIELDS = ("allowed_sources", "denied_sources")
LIMIT_FIELDS = tuple(Limits.model_fields)


def _listener_errors(exc: ModelError) -> dict[str, list[str]]:
    """The model's errors by form field: `allowed_sources.2` is the allowed list's ("#3")."""
    out: dict[str, list[str]] = {}
    for path, messages in errors_by_field(exc).items():
        for message in messages:
            field, text = line_error(path, message, _ACL_LINES) or (path, message)
            out.setdefault(field, []).append(text)
    return out


_ACL_LINES = {name: name for name in ACL_FIELDS}
"""The access control lists, one network per line of their fields."""


def listener_to_form(listener: Listener) -> dict[str, Any]:
    check = listener.health_check
    clients, backend = listener.client_certificates, listener.backend_tls
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
        **{key: "\n".join(str(n) for n in getattr(listener, key)) for key in ACL_FIELDS},
        **{f"limits_{key}": getattr(listener.limits, key) or "" for key in LIMIT_FIELDS},
        "tls_policy": listener.tls_policy.value,
        "client_auth": clients.mode.value if clients else "none",
        "client_ca_pem": clients.ca_pem if clients else "",
        "client_sans": " ".join(clients.subject_alt_names) if clients else "",
        "backend_ca_pem": backend.ca_pem or "" if backend else "",
        "backend_sni": backend.sni or "" if backend else "",
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
        return _render_form(form, _listener_errors(exc), None, None, 422)
    flash(f"Listener {stored.obj.name} created at revision {stored.revision}.")
    return redirect(url_for("listeners.listener_detail", name=stored.obj.name))


@bp.route("/listeners/<name>/edit", methods=["GET", "POST"])
@require(Role.OPERATOR)
def listener_edit(name: str) -> PageResult:
    view = queries.current()
    stored = view.snapshot.of(Listener).get(name)
    if stored is None:
        abort(404)
    if (owner := stored.obj.owner).kind.from_kubernetes:
        flash(f"Listener {name} belongs to {owner.kind.value} {owner.name}: change the "
              f"{owner.kind.value}.", "error")  # fmt: skip
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
        return _render_form(form, _listener_errors(exc), name, version, 422)
    except ConflictError:
        return _render_form(form, {"version": [CONFLICT]}, name, version, 409)
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
    port = rules.port_ref(target) if target else None
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
def listener_detail(name: str) -> PageResult:
    return _render_detail(name)


def _render_detail(name: str, status: int = 200) -> tuple[str, int]:
    """The listener's page; a refused change to its rules answers with it as it is now."""
    context = _detail_context(name)
    view = queries.current()
    listener: Listener = context["listener"]
    backends = listener_backends(view.snapshot, listener)
    envoys = queries.envoy_hosts(view, name) if listener.protocol.is_l7 else None
    can_edit = g.user.can(Role.OPERATOR)
    page = render_template(
        "listener_detail.html", backends=backends, envoys=envoys, can_edit=can_edit,
        **_rules_context(view.snapshot, listener, can_edit), **context,
    )  # fmt: skip
    return page, status


@bp.get("/listeners/<name>/status")
def listener_status(name: str) -> str:
    """The htmx fragment with the listener's live status on each node."""
    return render_template("_listener_status.html", **_detail_context(name))


# -- forwarding rules ----------------------------------------------------------------------


def submitted_rule_form() -> dict[str, Any]:
    form: dict[str, Any] = {k: v for k, v in request.form.items() if k != "csrf_token"}
    form["retry_on"] = request.form.getlist("retry_on")
    return form


def _rules_context(snapshot: Snapshot, listener: Listener, can_edit: bool) -> dict[str, Any]:
    """The rules table: whether it has edit controls, and what each target picks now."""
    editable = can_edit and not _rules_read_only(listener)
    targets = {
        r.name: rules.target_views(snapshot, listener, [rules.model_target(t) for t in r.targets])
        for r in listener.routes
        if r.forwards
    }
    return {"rules_editable": editable, "rule_targets": targets,
            "offer_https": editable and rules.offers_https_redirect(listener)}  # fmt: skip


def _rules_listener(name: str) -> Stored[Listener]:
    """The listener whose rules the console changes: an operator's HTTP, HTTPS or GRPC one.
    Any other goes back to its page saying why (a Service's rules change with the Service)."""
    stored = queries.current().snapshot.of(Listener).get(name)
    if stored is None:
        abort(404)
    why = _rules_read_only(stored.obj)
    if why:
        flash(why, "error")
        _back_to(name)
    return stored


def _rules_read_only(listener: Listener) -> str:
    """Why the console does not change this listener's rules, if it does not."""
    if listener.owner.kind is OwnerKind.SERVICE:
        return (f"Listener {listener.name} belongs to Service {listener.owner.name}: its rules "
                "change with the Service's openslb.io/rules annotation.")  # fmt: skip
    if listener.owner.kind is OwnerKind.GATEWAY:
        return (f"Listener {listener.name} belongs to Gateway {listener.owner.name}: its rules "
                "are the HTTPRoutes attached to it.")  # fmt: skip
    if listener.owner.kind is OwnerKind.INGRESS:
        return (f"Listener {listener.name} belongs to Ingress {listener.owner.name}: its rules "
                "are the Ingress's.")  # fmt: skip
    if not listener.protocol.is_l7:
        return (f"Listener {listener.name} is {listener.protocol.value}: only HTTP, HTTPS and "
                "GRPC listeners have rules.")  # fmt: skip
    return ""


def _back_to(name: str) -> NoReturn:
    abort(redirect(url_for("listeners.listener_detail", name=name, _anchor="rules")))


def _render_rule_form(
    stored: Stored[Listener],
    form: dict[str, Any],
    errors: dict[str, list[str]],
    *,
    editing: str | None,
    version: int,
    status: int = 200,
) -> tuple[str, int]:
    targets = rules.target_views(queries.current().snapshot, stored.obj, rules.form_targets(form))
    page = render_template(
        "listener_rule_form.html", listener=stored.obj, form=form, errors=errors,
        editing=editing, version=version, match_kinds=rules.MATCH_KINDS, targets=targets,
        methods=[m.value for m in Method], codes=[c.value for c in RedirectCode],
        retry_conditions=[r.value for r in RetryOn], schemes=[s.value for s in Scheme],
    )  # fmt: skip
    return page, status


@bp.get("/listeners/<name>/rules/preview")
def rule_preview(name: str) -> str:
    """The htmx fragment under the targets: what each line picks now, as it is typed."""
    stored = queries.current().snapshot.of(Listener).get(name)
    if stored is None:
        abort(404)
    views = rules.target_views(
        queries.current().snapshot, stored.obj, rules.form_targets(request.args)
    )
    return render_template("_rule_preview.html", targets=views, listener=stored.obj)


@bp.route("/listeners/<name>/rules/new", methods=["GET", "POST"])
@require(Role.OPERATOR)
def rule_new(name: str) -> PageResult:
    stored = _rules_listener(name)
    if request.method == "GET":
        return _render_rule_form(
            stored, dict(rules.NEW_RULE), {}, editing=None, version=stored.revision
        )
    return _save_rule(stored, None)


@bp.route("/listeners/<name>/rules/<rule>/edit", methods=["GET", "POST"])
@require(Role.OPERATOR)
def rule_edit(name: str, rule: str) -> PageResult:
    stored = _rules_listener(name)
    current = next((r for r in stored.obj.routes if r.name == rule), None)
    if current is None:
        abort(404, description=f"listener {name} has no rule named {rule!r}")
    if request.method == "GET":
        return _render_rule_form(
            stored, rules.rule_to_form(current), {}, editing=rule, version=stored.revision
        )
    return _save_rule(stored, rule)


def _save_rule(stored: Stored[Listener], editing: str | None) -> PageResult:
    """Add a rule, or replace the one edited where it stands: 422 naming the fields, or 409
    if the listener changed since the form was opened; nothing is saved either way."""
    form = submitted_rule_form()
    version = form_int(form.pop("version", None), "version")
    if editing is not None:
        form["name"] = editing  # renaming is adding the new rule and deleting the old one
    rule, problems = rules.form_to_rule(form)
    others = [r.name for r in stored.obj.routes if r.name != editing]
    if editing is None and rule["name"] in others:
        rules.problem(problems, "name", f"listener {stored.obj.name} has a rule {rule['name']} "
                                   "already: edit that one, or pick another name")  # fmt: skip
    position = _form_position(rules.text(form, "position"), len(others), problems)
    if problems:
        return _render_rule_form(
            stored, form, problems, editing=editing, version=version, status=422
        )
    name = stored.obj.name
    try:
        saved = operations().put_rule(name, rule, position, expect=version)
    except ModelError as exc:
        return _render_rule_form(
            stored, form, rules.rule_errors(exc), editing=editing, version=version, status=422
        )
    except ConflictError:
        return _render_rule_form(
            stored, form, {"version": [CONFLICT]}, editing=editing, version=version, status=409
        )
    at = [r.name for r in saved.obj.routes].index(rule["name"]) + 1
    flash(f"Rule {rule['name']} saved as #{at} of listener {name}, revision {saved.revision}.")
    return redirect(url_for("listeners.listener_detail", name=name, _anchor="rules"))


def _form_position(text: str, others: int, problems: dict[str, list[str]]) -> int | None:
    """The form's `#` (1: tried first) as Operations counts (0: first); empty: None."""
    if not text:
        return None
    at = form_int(text, "position")
    if not 1 <= at <= others + 1:
        rules.problem(problems, "position", f"between 1 (tried first) and {others + 1} (last)")
    return at - 1


def _change_rules(
    name: str, change: Callable[[Operations, int], Stored[Listener]], done: str
) -> PageResult:
    """Apply `change` at the listener's version the page showed: back to the page, or the
    page as it is now saying why nothing changed (422; 409 if the listener moved on)."""
    _rules_listener(name)
    version = form_int(request.form.get("version"), "version")
    try:
        stored = change(operations(), version)
    except ModelError as exc:
        flash(f"Nothing was changed: {exc}", "error")
        return _render_detail(name, 422)
    except ConflictError:
        flash("Someone else changed this listener since you opened its page, so nothing "
              "was changed: here it is now.", "error")  # fmt: skip
        return _render_detail(name, 409)
    flash(f"{done} Listener {name} is at revision {stored.revision}.")
    return redirect(url_for("listeners.listener_detail", name=name, _anchor="rules"))


@bp.post("/listeners/<name>/rules/<rule>/move")
@require(Role.OPERATOR)
def rule_move(name: str, rule: str) -> PageResult:
    """The up and down buttons, and a row dropped by drag and drop (rules.js), post here;
    `position` counts from 0 (first), as Operations and `slb listener rule move` do."""
    position = form_int(request.form.get("position"), "position")
    return _change_rules(
        name, lambda ops, version: ops.move_rule(name, rule, position, expect=version),
        f"Rule {rule} moved to #{position + 1}.",
    )  # fmt: skip


@bp.post("/listeners/<name>/rules/<rule>/delete")
@require(Role.OPERATOR)
def rule_delete(name: str, rule: str) -> PageResult:
    return _change_rules(
        name, lambda ops, version: ops.remove_rule(name, rule, expect=version),
        f"Rule {rule} deleted.",
    )  # fmt: skip


@bp.post("/listeners/<name>/rules/to-https")
@require(Role.OPERATOR)
def rule_to_https(name: str) -> PageResult:
    """One click: rule `to-https`, tried first, redirects every request to HTTPS (301)."""
    if not rules.offers_https_redirect(_rules_listener(name).obj):
        flash(f"Listener {name} is not HTTP, or redirects to HTTPS already.", "error")
        return _render_detail(name, 422)
    return _change_rules(
        name, lambda ops, version: ops.put_rule(name, rules.TO_HTTPS, 0, expect=version),
        "Every request is now redirected to HTTPS by rule to-https (#1).",
    )  # fmt: skip
