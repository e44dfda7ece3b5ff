"""One table of API operations: each route names its request and response models once.

The same pydantic models validate requests, serialise responses and generate the OpenAPI 3.1
document at ``/openapi.json`` (see :func:`openapi_document`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from flask import Blueprint, Response, jsonify, request
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from server.api.errors import ApiError, FieldError, field_path, from_pydantic, invalid


class Model(BaseModel):
    """Base of request models: unknown fields are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Base of query-string models (values arrive as text, so they are parsed, not strict)."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    """Base of response models."""

    model_config = ConfigDict(from_attributes=True)


@dataclass(frozen=True)
class Operation:
    """One API endpoint as the OpenAPI document describes it."""

    rule: str
    method: str
    endpoint: str
    summary: str
    description: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    content_type: str = "application/json"
    raw_body: str | None = None


OPERATIONS: list[Operation] = []

#: Conflicts (409) an operation can answer besides the statuses every operation of its kind
#: gets (see :func:`error_statuses`), by endpoint: the state of an object forbids the change.
CONFLICTS = frozenset({
    "tasks.complete", "tasks.skip", "outbox.schedule", "prefill.prefill",
    "templates.delete", "campaigns.update", "campaigns.launch", "enrollments.remove",
    "outlook_api.link", "outlook_api.sending",
})


def error_statuses(op: Operation) -> list[int]:
    """Every error status ``op`` can answer, as the document lists them.

    400 (malformed JSON, a bad header) and 422 (a field) for all; an authenticated one adds
    401 (no valid token), 403 (a token limited to an add-in, or a session cookie without the
    CSRF header) and 404 (ids are looked up as the caller's); a path id adds 404; a body
    adds 413 (over ``MAX_CONTENT_LENGTH``) and 415 (not the declared content type).
    """
    codes = {400, 422}
    if op.auth:
        codes |= {401, 403, 404}
    if _PATH_PARAM.search(op.rule):
        codes.add(404)
    if op.body is not None or op.raw_body is not None:
        codes |= {413, 415}
    if op.endpoint in CONFLICTS:
        codes.add(409)
    return sorted(codes)

#: The largest integer the API accepts anywhere (JavaScript's Number.MAX_SAFE_INTEGER): larger
#: ones cannot be ids, pages or cursors, and would overflow the database's integer columns.
MAX_INT = 2**53 - 1


def _oversized(value: Any, loc: tuple[Any, ...]) -> list[FieldError]:
    """A FieldError for every integer in a parsed model that is larger than MAX_INT."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            return [FieldError(field_path(loc), f"must be between -{MAX_INT} and {MAX_INT}")]
        return []
    if isinstance(value, BaseModel):
        return [e for name in type(value).model_fields
                for e in _oversized(getattr(value, name), (*loc, name))]
    if isinstance(value, list | tuple):
        return [e for i, item in enumerate(value) for e in _oversized(item, (*loc, i))]
    if isinstance(value, dict):
        return [e for k, item in value.items() for e in _oversized(item, (*loc, str(k)))]
    return []


NUL_MESSAGE = "must not contain NUL characters"


def nul_fields(value: Any, loc: tuple[Any, ...] = ()) -> list[FieldError]:
    """A FieldError for every text in a parsed value (model, list, dict) holding a NUL.

    PostgreSQL refuses NUL in text columns, and no name, subject or note needs one: every
    request model is checked here, so no field can forget it.
    """
    if isinstance(value, str):
        return [FieldError(field_path(loc), NUL_MESSAGE)] if "\x00" in value else []
    if isinstance(value, BaseModel):
        return [e for name in type(value).model_fields
                for e in nul_fields(getattr(value, name), (*loc, name))]
    if isinstance(value, list | tuple):
        return [e for i, item in enumerate(value) for e in nul_fields(item, (*loc, i))]
    if isinstance(value, dict):
        out: list[FieldError] = []
        for k, item in value.items():
            if isinstance(k, str) and "\x00" in k:
                out.append(FieldError(field_path((*loc, k.replace("\x00", ""))), NUL_MESSAGE))
            out.extend(nul_fields(item, (*loc, str(k))))
        return out
    if hasattr(value, "get_secret_value"):
        return nul_fields(value.get_secret_value(), loc)
    return []


def _one_line(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 or c in "\x85\u2028\u2029" for c in value):
        raise ValueError("must be one line, without line breaks or control characters")
    return value


#: Text that ends up in an email header or on one line of a protocol: no CR, LF or other
#: control character can smuggle a second header in.
OneLine = Annotated[str, AfterValidator(_one_line)]


def _parse(model: type[BaseModel], parse: Callable[[], BaseModel]) -> BaseModel:
    """Run a model's parser; answer its errors, NULs and integers beyond MAX_INT, by field."""
    try:
        parsed = parse()
    except ValidationError as exc:
        raise from_pydantic(exc, rule_of=getattr(model, "rule_of", None)) from None
    bad = _oversized(parsed, ()) + nul_fields(parsed)
    if bad:
        raise invalid(bad)
    return parsed


def operation(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    auth: bool = True,
    auth_in_view: bool = False,
    content_type: str = "application/json",
    raw_body: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view on ``bp``: parse ``body``/``query`` with their models, serialise output.

    The view receives path parameters, then ``body=`` and ``query=`` when declared, and returns
    a ``response`` model instance (or a Flask response for streams). With ``auth_in_view`` the
    endpoint is documented as authenticated but the view does it itself (a hot path that
    checks the token inside its own data query).
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        doc = (view.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        OPERATIONS.append(
            Operation(
                rule=(bp.url_prefix or "") + rule,
                method=method.upper(),
                endpoint=f"{bp.name}.{view.__name__}",
                summary=summary.strip(),
                description=description.strip(),
                tag=bp.name,
                body=body,
                query=query,
                response=response,
                status=status,
                auth=auth,
                content_type=content_type,
                raw_body=raw_body,
            )
        )

        @functools.wraps(view)
        def wrapper(**path: Any) -> Any:
            if auth and not auth_in_view:
                # Who is asking comes first: a caller without a valid token learns nothing
                # about the input rules or which objects exist.
                from server.accounts.auth import api_user

                api_user()
            if any(isinstance(v, int) and v > MAX_INT or isinstance(v, str) and "\x00" in v
                   for v in path.values()):
                raise ApiError(404, "not_found", "no such object")
            kwargs: dict[str, Any] = dict(path)
            if body is not None:
                raw = request.get_data() or b""
                if not raw.strip():
                    # An empty body stands for {}: required fields are then reported by name.
                    raw = b"{}"
                elif request.mimetype != "application/json":
                    raise ApiError(415, "unsupported_media_type",
                                   "send the request body as application/json")
                kwargs["body"] = _parse(body, lambda: body.model_validate_json(raw))
            if query is not None:
                args = request.args.to_dict()
                kwargs["query"] = _parse(query, lambda: query.model_validate(args))
            result = view(**kwargs)
            if isinstance(result, Response):
                return result
            if isinstance(result, BaseModel):
                resp = jsonify(result.model_dump(mode="json"))
                resp.status_code = status
                return resp
            return result

        bp.add_url_rule(rule, view_func=wrapper, methods=[method.upper()])
        return wrapper

    return decorate


_PATH_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_document(title: str, version: str, server_url: str) -> dict[str, Any]:
    """Generate the OpenAPI 3.1 document from the registered operations and their models."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        params: list[dict[str, Any]] = []
        for conv, name in _PATH_PARAM.findall(op.rule):
            params.append({
                "name": name, "in": "path", "required": True,
                "schema": {"type": "integer"} if conv == "int" else {"type": "string"},
            })
        if op.query is not None:
            qschema = op.query.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="validation")
            # Enums and nested models a parameter refers to live with the other schemas.
            for name, sub in qschema.pop("$defs", {}).items():
                components.setdefault(name, sub)
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required,
                               "schema": prop})
        item: dict[str, Any] = {
            "operationId": op.endpoint.replace(".", "_"),
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {},
        }
        if op.description:
            item["description"] = op.description
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(op.body, components,
                                                                     "validation")}},
            }
        elif op.raw_body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {op.raw_body: {"schema": {"type": "string"}}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = {op.content_type: {"schema": _schema(op.response, components,
                                                                  "serialization")}}
        elif op.content_type != "application/json":
            ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
        item["responses"][str(op.status)] = ok
        err_ref = {"$ref": "#/components/responses/Error"}
        for code in error_statuses(op):
            item["responses"][str(code)] = err_ref
        if op.auth:
            item["security"] = [{"bearer": []}]
        path = _PATH_PARAM.sub(r"{\2}", op.rule)
        paths.setdefault(path, {})[op.method.lower()] = item
    components["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"},
                               "rule": {"type": "string"}}}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "servers": [{"url": server_url}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": {"Error": {"description": "An error naming the field and rule",
                                    "content": {"application/json": {
                                        "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "relay token create --email E"}},
        },
    }
