"""Users (admins), API tokens (everyone's own) and one's own account."""

from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from web.auth import (
    AuthError,
    Role,
    accounts,
    audit,
    require,
    set_own_password,
    sign_out_everywhere,
)

bp = Blueprint("access", __name__)


@bp.get("/users")
@require(Role.ADMIN)
def users() -> str:
    return render_template("users.html", users=accounts().users(), errors={})


@bp.post("/users")
@require(Role.ADMIN)
def user_create() -> Response | tuple[str, int]:
    name = request.form.get("name", "").strip().lower()
    try:
        role = Role.named(request.form.get("role", "viewer"))
        accounts().create_user(name, request.form.get("password", ""), role)
    except AuthError as exc:
        page = render_template(
            "users.html", users=accounts().users(), errors={exc.field: [exc.message]}
        )
        return page, 422
    audit("create", "User", name, None, {"name": name, "role": role.label})
    flash(f"User {name} created.")
    return redirect(url_for("access.users"))


@bp.post("/users/<name>/delete")
@require(Role.ADMIN)
def user_delete(name: str) -> Response | tuple[str, int]:
    store = accounts()
    before = next((u for u in store.users() if u["name"] == name), None)
    try:
        if store.admins() == [name]:
            raise AuthError("name", "the last admin cannot be deleted")
        store.delete_user(name)
    except AuthError as exc:
        page = render_template("users.html", users=store.users(), errors={exc.field: [exc.message]})
        return page, 422
    audit("delete", "User", name, before, None)
    flash(f"User {name} deleted.")
    return redirect(url_for("access.users"))


@bp.get("/tokens")
def tokens() -> str:
    user = None if g.user.can(Role.ADMIN) else g.user.name
    return render_template(
        "tokens.html", tokens=accounts().tokens(user=user), errors={}, secret=None
    )


@bp.post("/tokens")
def token_create() -> tuple[str, int]:
    store = accounts()
    user = None if g.user.can(Role.ADMIN) else g.user.name
    try:
        role = Role.named(request.form.get("role") or g.user.role.label)
        days_text = request.form.get("expires_in_days", "").strip()
        if days_text and not days_text.isdigit():
            raise AuthError("expires_in_days", "a whole number of days")
        days = int(days_text) if days_text else current_app.config["TOKEN_LIFETIME_DAYS"]
        name = request.form.get("name", "").strip()
        token, secret = store.create_token(g.user, name, role, days=days)
    except AuthError as exc:
        page = render_template("tokens.html", tokens=store.tokens(user=user),
                               errors={exc.field: [exc.message]}, secret=None)  # fmt: skip
        return page, 422
    audit("create", "Token", token.id, None, token.shown())
    # The secret is shown once, in this response, and never stored in the clear.
    page = render_template("tokens.html", tokens=store.tokens(user=user), errors={}, secret=secret)
    return page, 200


@bp.post("/tokens/<token_id>/delete")
def token_revoke(token_id: str) -> Response:
    store = accounts()
    token = next((t for t in store.tokens() if t.id == token_id), None)
    if token is not None and (token.user == g.user.name or g.user.can(Role.ADMIN)):
        store.revoke(token_id)
        audit("delete", "Token", token_id, token.shown(), None)
        flash(f"Token {token.name} revoked.")
    return redirect(url_for("access.tokens"))


@bp.get("/account")
def account() -> str:
    return render_template("account.html", errors={})


@bp.post("/account/password")
def password_change() -> Response | tuple[str, int]:
    try:
        set_own_password(
            request.form.get("current_password", ""), request.form.get("new_password", "")
        )
    except AuthError as exc:
        return render_template("account.html", errors={exc.field: [exc.message]}), 422
    flash("Password changed; your other sessions are signed out.")
    return redirect(url_for("access.account"))


@bp.post("/account/sessions/end")
def sessions_end() -> Response:
    sign_out_everywhere()
    return redirect(url_for("auth.login"))
