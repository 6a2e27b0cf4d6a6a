"""Errors that name their fields: what every bad input to the model raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class FieldError(BaseModel):
    """One problem with one field, named by its dotted path."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ModelError(ValueError):
    """Bad input, with every problem found, each naming its field."""

    def __init__(self, kind: str, errors: list[FieldError]) -> None:
        self.kind = kind
        self.errors = errors
        super().__init__(f"invalid {kind}: " + "; ".join(str(e) for e in errors))

    @classmethod
    def from_validation(cls, kind: str, exc: ValidationError) -> ModelError:
        errors = []
        for err in exc.errors():
            # Union members add tags such as "lax-or-strict[...]" to the path: not fields.
            field = ".".join(str(part) for part in err["loc"] if "[" not in str(part))
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, CrossFieldError):
                prefix = f"{field}." if field else ""
                errors += [FieldError(field=prefix + f, message=m) for f, m in cause.problems]
                continue
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] not in ("missing", "value_error", "extra_forbidden") and "input" in err:
                message += f" (got {err['input']!r})"
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            errors.append(FieldError(field=field, message=message))
        return cls(kind, errors)


class CrossFieldError(ValueError):
    """Raised by model validators that check fields against each other: one entry per field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
