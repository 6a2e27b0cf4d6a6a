"""Kubernetes label selectors: parsing, validation and matching.

Listeners pick Services with the same selector language Kubernetes uses, so an operator
who knows `kubectl get -l` already knows ours: equality (`app=web`, `tier!=db`) and
set-based (`env in (prod,stage)`, `env notin (dev)`, `canary`, `!canary`) requirements,
joined by commas and all required to hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
_KEY_RE = re.compile(rf"^({_PREFIX}/)?{_NAME}\Z")
_VALUE_RE = re.compile(rf"^({_NAME})?\Z")


def check_label_key(key: str) -> str:
    """Return `key` if it is a valid label key, else raise ValueError saying why."""
    prefix, _, name = key.rpartition("/")
    if len(name) > 63 or len(prefix) > 253 or not _KEY_RE.match(key):
        raise ValueError(
            f"invalid label key {key!r}: an optional DNS prefix and '/', then a name of at most "
            "63 characters: alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )
    return key


def check_label_value(value: str) -> str:
    """Return `value` if it is a valid label value, else raise ValueError saying why."""
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise ValueError(
            f"invalid label value {value!r}: at most 63 characters: alphanumerics, '-', '_' or "
            "'.', starting and ending alphanumeric (or empty)"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """`labels` in key order if every key and value is valid, else raise ValueError."""
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return dict(sorted(labels.items()))


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Requirement(BaseModel):
    """One set-based requirement, as in `metav1.LabelSelectorRequirement`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return check_label_key(key)

    @field_validator("values")
    @classmethod
    def _values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            check_label_value(value)
        return tuple(sorted(set(values)))

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Requirement:
        needs_values = self.operator in (Operator.IN, Operator.NOT_IN)
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case Operator.IN:
                return labels.get(self.key) in self.values
            case Operator.NOT_IN:
                return labels.get(self.key) not in self.values
            case Operator.EXISTS:
                return self.key in labels
            case Operator.DOES_NOT_EXIST:
                return self.key not in labels
        raise AssertionError(self.operator)  # pragma: no cover - exhaustive match


class LabelSelector(BaseModel):
    """A `metav1.LabelSelector`: every label and every requirement must match.

    Unlike Kubernetes, an empty selector matches nothing: a listener with no selector
    must not silently take every exposed Service.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.empty:
            return False
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        return all(req.matches(labels) for req in self.match_expressions)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels.items()]
        for req in self.match_expressions:
            match req.operator:
                case Operator.IN | Operator.NOT_IN:
                    word = "in" if req.operator is Operator.IN else "notin"
                    parts.append(f"{req.key} {word} ({','.join(req.values)})")
                case Operator.EXISTS:
                    parts.append(req.key)
                case Operator.DOES_NOT_EXIST:
                    parts.append(f"!{req.key}")
        return ",".join(parts)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the `kubectl -l` string form; raise ValueError naming the bad part."""
        labels: dict[str, str] = {}
        expressions: list[Requirement] = []
        for part in _split_top_level(text):
            labels_part, requirement = _parse_requirement(part)
            if labels_part is not None:
                key, value = labels_part
                if key in labels and labels[key] != value:
                    raise ValueError(f"{part!r}: {key} is already required to equal {labels[key]}")
                labels[key] = value
            if requirement is not None:
                expressions.append(requirement)
        if not labels and not expressions:
            raise ValueError("empty selector: give at least one requirement, e.g. app=web")
        return cls(match_labels=labels, match_expressions=tuple(expressions))


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\Z")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in selector {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(current).strip())
    if any(not part for part in parts) and text.strip():
        raise ValueError(f"empty requirement in selector {text!r}")
    return [part for part in parts if part]


def _parse_requirement(part: str) -> tuple[tuple[str, str] | None, Requirement | None]:
    try:
        if match := _SET_RE.match(part):
            values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
            op = Operator.IN if match["op"] == "in" else Operator.NOT_IN
            return None, Requirement(key=match["key"], operator=op, values=values)
        if "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            return None, Requirement(key=key, operator=Operator.NOT_IN, values=(value,))
        if "=" in part:
            key, value = (s.strip() for s in part.split("==" if "==" in part else "=", 1))
            return (check_label_key(key), check_label_value(value)), None
        if part.startswith("!"):
            return None, Requirement(key=part[1:].strip(), operator=Operator.DOES_NOT_EXIST)
        return None, Requirement(key=part, operator=Operator.EXISTS)
    except ValueError as exc:
        raise ValueError(f"{part!r}: {_first_line(exc)}") from None


def _first_line(exc: ValueError) -> str:
    """The reason from a ValueError or a pydantic ValidationError, without its boilerplate."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors())
    return str(exc)
