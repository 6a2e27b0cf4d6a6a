"""Who may use the API: the caller (/me), console users (admins), API tokens (everyone's own)."""

from __future__ import annotations

from typing import Any

from flask import Response, abort, current_app, g, jsonify

from web.api.common import ApiBlueprint, field_error, json_body
from web.auth import (
    Accounts,
    AuthError,
    Role,
    accounts,
    audit,
    set_own_password,
    sign_out_everywhere,
)

bp = ApiBlueprint("api_access", __name__, tag="access")


def _auth_error(exc: AuthError) -> Any:
    return field_error("User", exc.field, exc.message)


@bp.operation(
    "/me", "GET", summary="Who this request is authenticated as",
    role=Role.VIEWER, ok=(200, "Me"),
)  # fmt: skip
def me() -> Response:
    return jsonify({"name": g.user.name, "role": g.user.role.label, "token": g.user.token})


@bp.operation(
    "/me/password", "POST",
    summary="Change your own password; your other console sessions end",
    role=Role.VIEWER, ok=(204, None), body="PasswordChange",
)  # fmt: skip
def change_own_password() -> Response:
    data = json_body()
    _only(data, {"current_password", "new_password"})
    try:
        set_own_password(_string(data, "current_password"), _string(data, "new_password"))
    except AuthError as exc:
        raise _auth_error(exc) from None
    return Response(status=204)


@bp.operation(
    "/me/sessions", "DELETE", summary="Sign out everywhere: end all your console sessions",
    role=Role.VIEWER, ok=(204, None),
)  # fmt: skip
def end_own_sessions() -> Response:
    sign_out_everywhere()
    return Response(status=204)


# -- users ----------------------------------------------------------------------------------


@bp.operation("/users", "GET", summary="Console users", role=Role.ADMIN, ok=(200, "UserList"))
def list_users() -> Response:
    return jsonify({"items": accounts().users()})


@bp.operation(
    "/users", "POST", summary="Create a user", role=Role.ADMIN,
    ok=(201, "User"), body="UserCreate", errors=(409,),
)  # fmt: skip
def create_user() -> Response:
    data = json_body()
    _only(data, {"name", "password", "role"})
    try:
        role = Role.named(_string(data, "role"))
        accounts().create_user(_string(data, "name"), _string(data, "password"), role)
    except AuthError as exc:
        if exc.field == "name" and "exists" in exc.message:
            abort(409, description=str(exc))
        raise _auth_error(exc) from None
    audit("create", "User", data["name"], None, {"name": data["name"], "role": role.label})
    user = next(u for u in accounts().users() if u["name"] == data["name"])
    response = jsonify(user)
    response.status_code = 201
    return response


@bp.operation(
    "/users/<name>", "PATCH", summary="Change a user's role or password",
    role=Role.ADMIN, ok=(200, "User"), body="UserPatch",
)  # fmt: skip
def patch_user(name: str) -> Response:
    data = json_body()
    _only(data, {"password", "role"})
    store = accounts()
    before = next((u for u in store.users() if u["name"] == name), None)
    if before is None:
        abort(404, description=f"no user named {name!r}")
    try:
        role = Role.named(_string(data, "role")) if "role" in data else None
        password = _string(data, "password") if "password" in data else None
        _keep_an_admin(store, name, role)
        store.update_user(name, role=role, password=password)
    except AuthError as exc:
        raise _auth_error(exc) from None
    after = next(u for u in store.users() if u["name"] == name)
    audit("update", "User", name, before, {**after, "password_changed": password is not None})
    return jsonify(after)


@bp.operation(
    "/users/<name>", "DELETE", summary="Delete a user and their tokens",
    role=Role.ADMIN, ok=(204, None), errors=(422,),
)  # fmt: skip
def delete_user(name: str) -> Response:
    store = accounts()
    before = next((u for u in store.users() if u["name"] == name), None)
    if before is None:
        abort(404, description=f"no user named {name!r}")
    try:
        _keep_an_admin(store, name, Role.VIEWER)
        store.delete_user(name)
    except AuthError as exc:
        raise _auth_error(exc) from None
    audit("delete", "User", name, before, None)
    return Response(status=204)


def _keep_an_admin(store: Accounts, name: str, new_role: Role | None) -> None:
    if new_role is not None and new_role < Role.ADMIN and store.admins() == [name]:
        raise AuthError("role", "the last admin cannot stop being one")


# -- tokens ---------------------------------------------------------------------------------


@bp.operation(
    "/tokens", "GET", summary="API tokens: your own (admins: everyone's)",
    role=Role.VIEWER, ok=(200, "TokenList"),
)  # fmt: skip
def list_tokens() -> Response:
    user = None if g.user.can(Role.ADMIN) else g.user.name
    return jsonify({"items": [t.shown() for t in accounts().tokens(user=user)]})


@bp.operation(
    "/tokens", "POST",
    summary="Create an API token for yourself; its secret is shown only in this response",
    role=Role.VIEWER, ok=(201, "TokenCreated"), body="TokenCreate",
)  # fmt: skip
def create_token() -> Response:
    data = json_body()
    _only(data, {"name", "role", "expires_in_days"})
    days = data.get("expires_in_days", current_app.config["TOKEN_LIFETIME_DAYS"])
    if not isinstance(days, int) or isinstance(days, bool):
        raise field_error("User", "expires_in_days", "a whole number of days")
    try:
        role = Role.named(_string(data, "role")) if "role" in data else None
        token, secret = accounts().create_token(g.user, _string(data, "name"), role, days=days)
    except AuthError as exc:
        raise _auth_error(exc) from None
    audit("create", "Token", token.id, None, token.shown())
    response = jsonify({**token.shown(), "secret": secret})
    response.status_code = 201
    return response


@bp.operation(
    "/tokens/<token_id>", "DELETE", summary="Revoke a token (yours; admins: anyone's)",
    role=Role.VIEWER, ok=(204, None),
)  # fmt: skip
def revoke_token(token_id: str) -> Response:
    store = accounts()
    token = next((t for t in store.tokens() if t.id == token_id), None)
    if token is None or (token.user != g.user.name and not g.user.can(Role.ADMIN)):
        abort(404, description=f"no token {token_id!r}")
    store.revoke(token_id)
    audit("delete", "Token", token_id, token.shown(), None)
    return Response(status=204)


def _only(data: dict[str, Any], allowed: set[str]) -> None:
    for extra in sorted(set(data) - allowed):
        raise field_error("User", extra, "unknown field")


def _string(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise field_error("User", field, "required: a non-empty string")
    return value
