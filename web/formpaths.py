"""Where a form shows the model's errors: error paths into the lists a form edits one
item per line, folded into that field with the item's place ("#3")."""

from __future__ import annotations

from collections.abc import Mapping


def line_error(path: str, message: str, lists: Mapping[str, str]) -> tuple[str, str] | None:
    """For an error at `path` inside one of `lists` (model name -> form field), the form
    field and the message prefixed with where in the list (`hosts.2` -> "#3: ..."); None
    for any other path."""
    top, _, rest = path.partition(".")
    if top not in lists:
        return None
    where = " ".join(f"#{int(p) + 1}" if p.isdigit() else p for p in rest.split(".") if p)
    return lists[top], f"{where}: {message}" if where else message
