"""Domain errors raised by services; the API turns them into 4xx answers."""

from __future__ import annotations

from server.api.errors import FieldError


class Invalid(Exception):
    """Input that breaks a rule: one FieldError per offending field (answered with 422)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class Conflict(Exception):
    """An operation that the object's current state does not allow (answered with 409)."""


class Forbidden(Exception):
    """The caller may see the object but not change it (answered with 403)."""
