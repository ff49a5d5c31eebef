"""What the store refuses, and why: each error names the object and field it is about."""

from __future__ import annotations

from pydantic import ValidationError

from domain.blueprint_file import field_path


class StoreError(Exception):
    """A request the store refuses; the message says what to do. Never holds a value."""

    code = "error"

    def __init__(self, message: str, *, object: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.object = object
        self.field = field


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"


class Invalid(StoreError):
    code = "invalid"


class MigrationError(RuntimeError):
    pass


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """A readable message and the first field it is about, without the input values."""
    parts, first = [], None
    for detail in error.errors(include_url=False, include_input=False):
        path = field_path(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
        first = first or path or None
    return "; ".join(parts), first
