"""Every status an /api endpoint answers is in /openapi.json for that operation.

The walk calls every documented operation the ways a client gets it wrong (no token, a token
limited to an add-in, a session cookie without the CSRF header, the wrong content type, a body
too large, an empty or malformed body, an unknown id, a bad query) and checks each answer's
status is documented; the conflicts (409) are reached the real way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from server.accounts.service import create_token
from server.api.operations import OPERATIONS
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from tests.conftest import World, email_step, make_campaign, make_contact, make_template
from tests.web.test_campaigns import sign_in

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _documented(client: FlaskClient) -> dict[tuple[str, str], set[int]]:
    doc = client.get("/openapi.json").json
    return {(path, method.upper()): {int(code) for code in item["responses"]}
            for path, methods in doc["paths"].items() for method, item in methods.items()}


def _url(rule: str) -> str:
    return _PARAM.sub(lambda m: "999999" if m.group(1) == "int" else "google", rule)


def _calls(world: World, scoped: str) -> list[dict[str, Any]]:
    """The wrong ways to call an operation, as test-client keyword arguments."""
    rep = world.auth(world.rep)
    return [
        {},
        {"headers": {"Authorization": "Bearer nope"}},
        {"headers": {"Authorization": f"Bearer {scoped}"}},
        {"headers": rep},
        {"headers": rep, "data": "x=1", "content_type": "application/x-www-form-urlencoded"},
        {"headers": rep, "data": "{", "content_type": "application/json"},
        {"headers": rep, "json": {"unknown": 1}},
        {"headers": rep, "json": {"x": "y" * 3000}},
        {"headers": rep, "query_string": {"page": "x", "status": "nope"}},
    ]


def test_every_answered_status_is_documented(app: Flask, client: FlaskClient,
                                             session: Session, world: World):
    """Is every status the walk gets from every /api operation listed for that operation?"""
    scoped = create_token(session, world.rep, scope="outlook")
    session.commit()
    app.config["MAX_CONTENT_LENGTH"] = 2000
    documented = _documented(client)
    undocumented: set[tuple[str, str, int]] = set()
    seen: set[int] = set()
    for op in OPERATIONS:
        if op.content_type == "text/event-stream":
            continue
        path = _PARAM.sub(r"{\2}", op.rule)
        for kwargs in _calls(world, scoped):
            r = client.open(_url(op.rule), method=op.method, **kwargs)
            r.close()
            seen.add(r.status_code)
            if r.status_code not in documented[(path, op.method)]:
                undocumented.add((op.method, path, r.status_code))
    # A session cookie without the CSRF header (403) on every unsafe method.
    sign_in(client)
    for op in OPERATIONS:
        if op.method != "GET":
            path = _PARAM.sub(r"{\2}", op.rule)
            r = client.open(_url(op.rule), method=op.method, json={})
            seen.add(r.status_code)
            if r.status_code not in documented[(path, op.method)]:
                undocumented.add((op.method, path, r.status_code))
    assert not undocumented, sorted(undocumented)
    assert {401, 403, 404, 413, 415, 422} <= seen  # the walk did reach them


@pytest.fixture
def ended(session: Session, world: World) -> dict[str, int]:
    """An ended campaign with one person launched, and a template it uses."""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "ada@example.com")
    launch(session, world.rep, campaign, [contact.id],
           now=datetime(2026, 11, 24, 10, tzinfo=UTC))
    session.commit()
    return {"campaign": campaign.id, "contact": contact.id, "template": tpl.id}


def test_conflicts_are_documented(client: FlaskClient, world: World, ended: dict[str, int]):
    """Are the 409s (a template in use, a campaign with people or ended) documented?"""
    documented = _documented(client)
    h = world.auth(world.rep)
    cid = ended["campaign"]
    answers = [
        ("DELETE", "/api/templates/{template_id}",
         client.delete(f"/api/templates/{ended['template']}", headers=h)),
        ("PATCH", "/api/campaigns/{campaign_id}",
         client.patch(f"/api/campaigns/{cid}", headers=h,
                      json={"steps": [{"day": 1, "type": "call"}]})),
    ]
    assert client.post(f"/api/campaigns/{cid}/end", headers=h).status_code == 200
    answers.append(("POST", "/api/campaigns/{campaign_id}/launch",
                    client.post(f"/api/campaigns/{cid}/launch", headers=h,
                                json={"contact_ids": [ended["contact"]]})))
    for method, path, r in answers:
        assert r.status_code == 409, (path, r.json)
        assert 409 in documented[(path, method)], path
