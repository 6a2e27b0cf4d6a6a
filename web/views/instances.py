"""LB instances, VIP pools and node groups; exposed Services."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from slb.model import AddressPool, Listener, LoadBalancer, ModelError, NodeGroup, Service
from slb.storage.store import ConflictError
from web import queries
from web.auth import Role, require
from web.db import operations
from web.state import preview, service_row
from web.views.common import errors_by_field, form_data, form_int

bp = Blueprint("instances", __name__)


def _instances_page(
    errors: dict[str, list[str]] | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> tuple[str, int]:
    view = queries.current()
    rows = [
        queries.load_balancer_json(view, s)
        for _, s in sorted(view.snapshot.of(LoadBalancer).items())
    ]
    pools = [s for _, s in sorted(view.snapshot.of(AddressPool).items())]
    groups = [s for _, s in sorted(view.snapshot.of(NodeGroup).items())]
    page = render_template(
        "instances.html", rows=rows, pools=pools, groups=groups,
        errors=errors or {}, form=form or {},
    )  # fmt: skip
    return page, status


@bp.get("/instances")
def instances() -> tuple[str, int]:
    return _instances_page()


@bp.post("/instances")
@require(Role.OPERATOR)
def instance_create() -> tuple[str, int] | Response:
    form = form_data()
    data: dict[str, object] = dict(form)
    if "allowed_namespaces" in form:
        data["allowed_namespaces"] = form["allowed_namespaces"].replace(",", " ").split()
    try:
        stored = operations().add_load_balancer(data)
    except ModelError as exc:
        return _instances_page({f"lb.{k}": v for k, v in errors_by_field(exc).items()}, form, 422)
    except ConflictError:
        return _instances_page({"lb.name": ["an instance with this name exists"]}, form, 409)
    flash(f"Instance {stored.obj.name} created.")
    return redirect(url_for("instances.instances"))


@bp.get("/instances/<name>")
def instance_detail(name: str) -> str:
    view = queries.current()
    stored = view.snapshot.of(LoadBalancer).get(name)
    if stored is None:
        abort(404)
    services = [
        service_row(s) for _, s in sorted(view.snapshot.of(Service).items())
        if s.obj.load_balancer == name
    ]  # fmt: skip
    data = queries.load_balancer_json(view, stored)
    all_listeners = view.snapshot.of(Listener)
    listeners = [(all_listeners[n], view.states[n]) for n in data["listeners"]]
    return render_template(
        "instance_detail.html", lb=stored.obj, data=data, services=services, listeners=listeners
    )


@bp.post("/instances/<name>/delete")
@require(Role.OPERATOR)
def instance_delete(name: str) -> tuple[str, int] | Response:
    version = form_int(request.form.get("version"), "version")
    try:
        operations().remove_load_balancer(name, expect=version)
    except ModelError as exc:
        return _instances_page({"delete": [e.message for e in exc.errors]}, None, 422)
    except ConflictError:
        return _instances_page({"delete": ["the instance changed; reload and retry"]}, None, 409)
    flash(f"Instance {name} deleted.")
    return redirect(url_for("instances.instances"))


@bp.post("/pools")
@require(Role.ADMIN)  # the address space is the admins': pools say what may be a VIP
def pool_put() -> tuple[str, int] | Response:
    form = form_data()
    data = {
        "name": form.get("name", ""),
        "cidrs": [c.strip() for c in form.get("cidrs", "").replace(",", " ").split() if c.strip()],
        "reserved": form.get("reserved", "").replace(",", " ").split(),
        "auto_assign": "auto_assign" in request.form,
    }
    version = form_int(form.get("version"), "version")
    try:
        operations().put_pool(data, expect=version)
    except ModelError as exc:
        return _instances_page({f"pool.{k}": v for k, v in errors_by_field(exc).items()}, form, 422)
    except ConflictError:
        return _instances_page({"pool.name": ["a pool with this name exists"]}, form, 409)
    flash(f"Pool {data['name']} saved.")
    return redirect(url_for("instances.instances"))


@bp.post("/pools/<name>/delete")
@require(Role.ADMIN)
def pool_delete(name: str) -> tuple[str, int] | Response:
    version = form_int(request.form.get("version"), "version")
    try:
        operations().remove_pool(name, expect=version)
    except ModelError as exc:
        return _instances_page({"delete": [e.message for e in exc.errors]}, None, 422)
    except ConflictError:
        return _instances_page({"delete": ["the pool changed; reload and retry"]}, None, 409)
    flash(f"Pool {name} deleted.")
    return redirect(url_for("instances.instances"))


@bp.get("/services")
def services() -> str:
    view = queries.current()
    text = request.args.get("selector", "")
    if text.strip():
        found = preview(view.snapshot, text)
        rows, error = list(found.services), found.error
    else:
        rows = [service_row(s) for _, s in sorted(view.snapshot.of(Service).items())]
        error = None
    return render_template("services.html", rows=rows[:500], total=len(rows), selector=text,
                           error=error)  # fmt: skip
