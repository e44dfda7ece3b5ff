"""API errors: every error is JSON that names the field and, where one applies, the rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException


@dataclass
class FieldError:
    """One problem with one input field."""

    field: str
    message: str
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.rule:
            out["rule"] = self.rule
        return out


@dataclass
class ApiError(Exception):
    """An error the API answers with: status, a short code, a sentence, field errors."""

    status: int
    code: str
    message: str
    errors: list[FieldError] = field(default_factory=list)

    def response(self) -> Any:
        """The Flask response for this error."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        resp = jsonify(body)
        resp.status_code = self.status
        return resp


def not_found(what: str) -> ApiError:
    """A 404 that does not reveal whether the object exists elsewhere."""
    return ApiError(404, "not_found", f"{what} not found")


def invalid(errors: list[FieldError]) -> ApiError:
    """A 422 listing every offending field."""
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ApiError(422, "validation_failed", summary, errors)


def field_path(loc: tuple[Any, ...]) -> str:
    """A field's name as errors show it: ``("steps", 0, "day")`` is ``steps[0].day``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def from_pydantic(exc: ValidationError, prefix: str = "",
                  rule_of: Callable[[tuple[Any, ...]], str | None] | None = None) -> ApiError:
    """Turn a pydantic error into a 400 (malformed JSON) or a 422 naming each field.

    ``rule_of`` names the rule a field's value breaks (from its location), when the model's
    fields belong to documented rules (a campaign's, S5).
    """
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid":
            return ApiError(400, "malformed_json",
                            f"the request body is not valid JSON: {err['msg']}")
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        name = field_path(loc)
        if prefix:
            name = f"{prefix}.{name}" if name != "body" else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        errors.append(FieldError(name, msg, rule_of(loc) if rule_of else None))
    seen: set[str] = set()
    unique = [e for e in errors if not (e.field in seen or seen.add(e.field))]
    return invalid(unique)


def init_app(app: Flask) -> None:
    """Answer API errors and HTTP errors under /api as JSON."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Any:
        return err.response()

    from server.errors import Conflict, Forbidden, Invalid

    @app.errorhandler(Invalid)
    def _invalid(err: Invalid) -> Any:
        return invalid(err.errors).response()

    @app.errorhandler(Conflict)
    def _conflict(err: Conflict) -> Any:
        return ApiError(409, "conflict", str(err)).response()

    @app.errorhandler(Forbidden)
    def _forbidden(err: Forbidden) -> Any:
        return ApiError(403, "forbidden", str(err)).response()

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Any:
        from flask import request

        if request.path.startswith("/api") or request.path == "/openapi.json":
            return ApiError(err.code or 500, (err.name or "error").lower().replace(" ", "_"),
                            err.description or "").response()
        return err
