"""The OpenAPI document: version 3.1.0, every /api route described, every $ref resolvable."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def _doc(client: FlaskClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.json


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            out.extend(_refs(value))
        return out
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_document_is_openapi_3_1_and_valid(client: FlaskClient):
    """Is /openapi.json an OpenAPI 3.1.0 document that openapi-spec-validator accepts?"""
    doc = _doc(client)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "Relay API"
    validate(doc)


def test_validator_would_catch_a_broken_document(client: FlaskClient):
    """Does the validator used above reject a document with a response that lacks its schema?"""
    doc = _doc(client)
    doc["paths"]["/api/contacts"]["get"]["responses"] = {"200": {"content": {}}}
    try:
        validate(doc)
    except OpenAPIValidationError:
        return
    raise AssertionError("a response without a description was accepted")


def test_every_api_route_is_described(app: Flask, client: FlaskClient):
    """Does every /api route in the app's URL map appear, with each of its methods, and no more?"""
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method.lower()))
    doc = _doc(client)
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes, "no /api routes registered"
    assert routes == described


def test_path_parameters_match_the_route(client: FlaskClient):
    """Is every {name} in a path declared as a required path parameter of each operation?"""
    for path, item in _doc(client)["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (path, method)
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")


def test_every_ref_resolves(client: FlaskClient):
    """Does every $ref in the document point at something that exists in it?"""
    doc = _doc(client)
    refs = set(_refs(doc))
    assert "#/components/schemas/CampaignIn" in refs
    for ref in refs:
        _resolve(doc, ref)


def test_operations_are_uniquely_named_and_secured(client: FlaskClient):
    """Has every operation a unique operationId, a summary, bearer security and error answers?"""
    doc = _doc(client)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"], (path, method)
            assert op["security"] == [{"bearer": []}], (path, method)
            assert {"401", "404", "422"} <= set(op["responses"]), (path, method)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_request_schemas_are_the_ones_the_views_validate_with(client: FlaskClient):
    """Does the document carry the validation models: unknown fields refused, enums listed?"""
    doc = _doc(client)
    body = doc["paths"]["/api/campaigns"]["post"]["requestBody"]["content"]["application/json"]
    schema = _resolve(doc, body["schema"]["$ref"])
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "steps"}
    step = _resolve(doc, schema["properties"]["steps"]["items"]["$ref"])
    option_ref = next(s["$ref"] for s in step["properties"]["send_option"]["anyOf"] if "$ref" in s)
    assert set(_resolve(doc, option_ref)["enum"]) == {
        "choose_at_launch", "at_time", "same_as_previous", "task"}
    imp = doc["paths"]["/api/contacts/import"]["post"]["requestBody"]["content"]
    assert list(imp) == ["text/csv"]


def test_query_parameters_are_described(client: FlaskClient):
    """Are the Command Center filters listed as query parameters with their allowed values?"""
    doc = _doc(client)
    params = {p["name"]: p for p in doc["paths"]["/api/tasks"]["get"]["parameters"]}
    assert {"due", "type", "campaign_id", "status", "page", "per_page"} <= set(params)
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    due = params["due"]["schema"]
    if "$ref" in due:
        due = _resolve(doc, due["$ref"])
    assert set(due["enum"]) == {"overdue", "today", "tomorrow", "next7", "all"}
