"""The forwarding-rule form of the console: a rule as form fields and back, the model's
errors by the form field they concern, and what each target picks now.

Pure but for `preview` over a snapshot: the views in `web.views.listeners` do the rest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slb.model import (
    ForwardTarget,
    HeaderChanges,
    Listener,
    ModelError,
    PortRef,
    Protocol,
    Route,
    Scheme,
    ValueMatch,
    named_service,
    parse_value_matches,
    target_fields,
)
from slb.snapshot import Snapshot
from web.formpaths import line_error
from web.state import Preview, preview


def port_ref(text: str) -> PortRef:
    """A target port as typed: a number, else a port name."""
    return int(text) if text.isdigit() else text


MATCH_KINDS = {
    "prefix": ("path_prefix", "path prefix"),
    "segments": ("path_segments", "path prefix of whole segments"),
    "exact": ("path_exact", "exact path"),
    "regex": ("path_regex", "path regex (RE2, the whole path)"),
    "grpc": ("grpc_service", "gRPC service"),
}
"""The rule form's path matches: the model's field each sets, and its label."""
PATH_FIELDS = {field for field, _ in MATCH_KINDS.values()}
MATCH_FIELDS = PATH_FIELDS | {"hosts", "grpc_method", "headers", "query_params", "method",
                              "grpc_only"}  # fmt: skip
"""What a rule matches on: a rule with none of them matches every request."""
ANSWERS = {
    "redirect": ("scheme", "host", "port", "path", "path_prefix", "code"),
    "fixed_response": ("status", "body", "content_type"),
}
"""The actions other than forwarding, with their fields (`redirect_host` on the form)."""
NEW_RULE = {"match": "prefix", "action": "forward", "redirect_code": "302",
            "fixed_response_status": "200"}  # fmt: skip
TO_HTTPS = {"name": "to-https", "redirect": {"scheme": "https", "code": 301}}
"""The one-click rule of an HTTP listener, tried first: every request goes to HTTPS."""
_TARGET_OPTION = re.compile(r"^(port|weight)=([^=\s]*)\Z")
_LINE_FIELDS = {"forward_to": "targets", "hosts": "hosts", "headers": "headers",
                "query_params": "query_params", "request_headers": "request_headers",
                "response_headers": "response_headers"}  # fmt: skip
"""Parts of a rule the form writes as lines, by the model's name."""
_PART_FIELDS = {"redirect": "action", "fixed_response": "action", "retry.retry_on": "retry_on"}
"""The form's field where it is not the model's path with `_` for `.` (`redirect_host`)."""

Target = tuple[str, PortRef | None, int | None]
"""A forward target as shown: its selector ("": the listener's), port, weight (None:
unreadable)."""


def text(form: Mapping[str, Any], key: str) -> str:
    return str(form.get(key) or "").strip()


def lines(form: Mapping[str, Any], key: str) -> list[str]:
    return [line.strip() for line in str(form.get(key) or "").splitlines() if line.strip()]


def _fields(form: Mapping[str, Any], part: str, names: Sequence[str]) -> dict[str, str]:
    """The fields of one part of a rule that were filled in (`redirect_host` -> `host`)."""
    return {name: text(form, f"{part}_{name}") for name in names if text(form, f"{part}_{name}")}


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    if value:
        data[key] = value


def problem(problems: dict[str, list[str]], field: str, message: str) -> None:
    problems.setdefault(field, []).append(message)


def split_target(line: str) -> tuple[str, dict[str, str]]:
    """A target line, `PICKS [port=P] [weight=W]`: what it picks (a selector, `service
    NS/NAME`, or `listener` or nothing: the listener's Services) and the options at its
    end."""
    words = line.split()
    options: dict[str, str] = {}
    while words and (option := _TARGET_OPTION.match(words[-1])):
        options.setdefault(option[1], option[2])
        words.pop()
    selector = " ".join(words)
    return ("" if selector == "listener" else selector), options


def _target(line: str) -> dict[str, Any]:
    """One `forward_to` entry from its line; ValueError if its selector cannot be read."""
    picks, options = split_target(line)
    target = target_fields(picks)
    if options.get("port"):
        target["target_port"] = port_ref(options["port"])
    if "weight" in options:
        target["weight"] = options["weight"]
    return target


def _target_line(target: ForwardTarget) -> str:
    """A forward target as the form writes it (the listener's Services: `listener`)."""
    words = [str(target)]
    if _TARGET_OPTION.match(words[0]):  # a label called port or weight: not an option
        words[0] = words[0].replace("=", "==", 1)
    if target.target_port is not None:
        words.append(f"port={target.target_port}")
    if target.weight != 1:
        words.append(f"weight={target.weight}")
    return " ".join(words)


def _header_changes(
    form: Mapping[str, Any], field: str, problems: dict[str, list[str]]
) -> dict[str, list[Any]]:
    """`set NAME: VALUE`, `add NAME: VALUE` and `remove NAME` lines as `HeaderChanges`."""
    changes: dict[str, list[Any]] = {}
    for line in lines(form, field):
        verb, _, rest = line.partition(" ")
        name, colon, value = rest.partition(":")
        verb = verb.lower()
        if verb in ("set", "add") and colon and name.strip():
            changes.setdefault(verb, []).append({"name": name.strip(), "value": value.strip()})
        elif verb == "remove" and rest.strip() and not colon:
            changes.setdefault("remove", []).append(rest.strip())
        else:
            problem(problems, field, f"{line!r}: write 'set NAME: VALUE', 'add NAME: VALUE' "
                                      "or 'remove NAME'")  # fmt: skip
    return changes


def _change_lines(side: HeaderChanges) -> str:
    """Header changes as the form writes them: `set NAME: VALUE`, `add ...`, `remove NAME`."""
    lines = [f"set {h.name}: {h.value}" for h in side.set]
    lines += [f"add {h.name}: {h.value}" for h in side.add]
    return "\n".join(lines + [f"remove {name}" for name in side.remove])


def _match_lines(matches: Sequence[ValueMatch]) -> str:
    """Header or query matches as the form writes them: NAME, NAME=VALUE or NAME~REGEX."""
    signs = {"present": "", "exact": "=", "regex": "~"}
    return "\n".join(f"{m.name}{signs[m.type.value]}{m.value}" for m in matches)


def form_to_rule(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The rule form's fields as the model's document, and the lines it could not read.

    Values stay strings where the model converts them, so the model reports a bad one with
    its field named, as the API does. Only the chosen action's fields are sent: the form
    keeps the others so that switching the action loses nothing typed.
    """
    problems: dict[str, list[str]] = {}
    rule: dict[str, Any] = {"name": text(form, "name")}
    _put(rule, "hosts", [h for h in re.split(r"[\s,]+", text(form, "hosts")) if h])
    _put(rule, "method", text(form, "method"))
    rule.update(_match(form, problems))
    _put(rule, "headers", parse_value_matches(lines(form, "headers")))
    _put(rule, "query_params", parse_value_matches(lines(form, "query_params")))
    _put(rule, "grpc_only", bool(text(form, "grpc_only")))
    action = text(form, "action")
    if action in ANSWERS:
        rule[action] = _fields(form, action, ANSWERS[action])
        if action == "fixed_response" and "body" in rule[action]:  # as typed, to the last line
            rule[action]["body"] = str(form["fixed_response_body"]).replace("\r\n", "\n")
    else:
        rule.update(_forwarding(form, problems))
    _put(rule, "response_headers", _header_changes(form, "response_headers", problems))
    return rule, problems


def _match(form: Mapping[str, Any], problems: dict[str, list[str]]) -> dict[str, str]:
    kind, value = text(form, "match"), text(form, "match_value")
    found: dict[str, str] = {}
    if kind in MATCH_KINDS:
        field, label = MATCH_KINDS[kind]
        if value:
            found[field] = value
        else:
            problem(problems, "match_value", f"give the {label} to match, or match any path")
    _put(found, "grpc_method", text(form, "grpc_method"))
    return found


def _forwarding(form: Mapping[str, Any], problems: dict[str, list[str]]) -> dict[str, Any]:
    """The parts of a rule only forwarded requests have."""
    part: dict[str, Any] = {}
    targets = []
    for n, line in enumerate(lines(form, "targets"), 1):
        try:
            targets.append(_target(line))
        except ValueError as exc:
            problem(problems, "targets", f"#{n}: {str(exc).splitlines()[0]}")
    _put(part, "forward_to", targets)
    _put(part, "backend_protocol", text(form, "backend_protocol"))
    _put(part, "rewrite", _fields(form, "rewrite", ("path_prefix", "path", "host")))
    _put(part, "request_headers", _header_changes(form, "request_headers", problems))
    _put(part, "timeout_s", text(form, "timeout_s"))
    retry: dict[str, Any] = _fields(form, "retry", ("attempts", "per_try_timeout_s"))
    _put(retry, "retry_on", [r for r in form.get("retry_on") or () if r])
    _put(part, "retry", retry)
    return part


def rule_to_form(rule: Route) -> dict[str, Any]:
    """A stored rule as the form shows it, to be edited."""
    kind = next((k for k, (f, _) in MATCH_KINDS.items() if getattr(rule, f) is not None), "")
    form: dict[str, Any] = {
        **NEW_RULE,
        "name": rule.name, "hosts": " ".join(rule.hosts), "match": kind or "any",
        "match_value": getattr(rule, MATCH_KINDS[kind][0]) if kind else "",
        "grpc_method": rule.grpc_method or "", "method": rule.method.value if rule.method else "",
        "headers": _match_lines(rule.headers), "query_params": _match_lines(rule.query_params),
        "grpc_only": "1" if rule.grpc_only else "",
        "backend_protocol": rule.backend_protocol.value if rule.backend_protocol else "",
        "action": next((a for a in ANSWERS if getattr(rule, a) is not None), "forward"),
        "targets": "\n".join(_target_line(t) for t in rule.forward_to),
        "request_headers": _change_lines(rule.request_headers),
        "response_headers": _change_lines(rule.response_headers),
        "timeout_s": "" if rule.timeout_s is None else rule.timeout_s,
        "retry_on": [r.value for r in rule.retry.retry_on] if rule.retry else [],
    }  # fmt: skip
    for part in (*ANSWERS, "rewrite", "retry"):
        value = getattr(rule, part)
        if value is not None:
            fields = value.model_dump(mode="json", exclude_none=True, exclude={"retry_on"})
            form.update({f"{part}_{k}": v for k, v in fields.items()})
    return form


def rule_errors(exc: ModelError) -> dict[str, list[str]]:
    """The model's errors by the rule form's field: `routes.3.path_regex` is the match
    value's, `routes.3.forward_to.1.weight` the targets' ("#2 weight: ..."),
    `routes.3.redirect.host` the redirect host's."""
    out: dict[str, list[str]] = {}
    for error in exc.errors:
        field, message = _form_error(error.field, error.message)
        problem(out, field, message)
    return out


def _form_error(path: str, message: str) -> tuple[str, str]:
    if path == "routes":  # Operations names the list for where the rule goes
        return ("position" if message.startswith("position") else ""), message
    path = re.sub(r"^routes\.\d+\.", "", path)
    if (folded := line_error(path, message, _LINE_FIELDS)) is not None:
        return folded
    top = path.partition(".")[0]
    if top in PATH_FIELDS:
        return "match_value", message
    nested = ".".join(path.split(".")[:2])
    return _PART_FIELDS.get(nested, nested.replace(".", "_")), message


@dataclass(frozen=True)
class TargetView:
    """A forward target as the rules show it: the Services it picks now and its share."""

    selector: str
    """A selector, `service NS/NAME`, or empty: the listener's Services."""
    port: PortRef | None
    share: float | None
    """Percent of the rule's requests; None while a weight cannot be read."""
    picked: Preview

    @property
    def service(self) -> str | None:
        """The one Service it names, if it names one."""
        return named_service(self.selector)

    @property
    def percent(self) -> str:
        return "" if self.share is None else f"{self.share:.1f}".removesuffix(".0") + "%"


def target_views(
    snapshot: Snapshot, listener: Listener, targets: Sequence[Target]
) -> list[TargetView]:
    """What each target picks now (one preview per selector and port) and its share."""
    total = sum(weight or 0 for _, _, weight in targets)
    found: dict[tuple[str, PortRef | None], Preview] = {}
    views = []
    for selector, port, weight in targets:
        if (selector, port) not in found:
            text = selector or (str(listener.selector) if listener.selector else "")
            found[selector, port] = preview(
                snapshot, text, listener.target_port if port is None else port,
                listener.load_balancer,
            )  # fmt: skip
        share = None if weight is None or not total else weight * 100 / total
        views.append(TargetView(selector, port, share, found[selector, port]))
    return views


def line_target(line: str) -> Target:
    selector, options = split_target(line)
    weight = options.get("weight", "1")
    port = port_ref(options["port"]) if options.get("port") else None
    return selector, port, int(weight) if weight.isdigit() else None


def form_targets(form: Mapping[str, Any]) -> list[Target]:
    """The form's target lines as targets; none: the listener's Services."""
    return [line_target(line) for line in lines(form, "targets")] or [("", None, 1)]


def model_target(target: ForwardTarget) -> Target:
    picks = "" if target.selector is None and target.service is None else str(target)
    return picks, target.target_port, target.weight


def offers_https_redirect(listener: Listener) -> bool:
    """An HTTP listener that does not send every request to HTTPS yet."""
    return listener.protocol is Protocol.HTTP and not any(
        r.name == TO_HTTPS["name"]
        or (r.redirect is not None and r.redirect.scheme is Scheme.HTTPS
            and not r.model_dump(include=MATCH_FIELDS, exclude_defaults=True))
        for r in listener.routes
    )  # fmt: skip
