"""Bad input that used to reach deep: header breaks, NUL bytes, deep nesting, far dates, sizes.

Each is refused at the edge (422, or 413 for a body too large), by field, with nothing stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.campaigns.models import Campaign, CampaignStep
from server.campaigns.rules import MAX_STEPS
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.contacts import service as contacts
from server.contacts.models import Contact
from server.tasks.models import Task
from tests.conftest import World, email_step, make_campaign, make_contact, make_template
from tests.web.test_campaigns import sign_in

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
NESTED = "{{" + "(" * 3000 + "first_name" + ")" * 3000 + "}}"


def _errors(response: Any, status: int = 422) -> dict[str, dict[str, Any]]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return {e["field"]: e for e in response.json.get("errors", [])}


def _count(session: Session, model: type) -> int:
    n = session.scalar(select(func.count()).select_from(model)) or 0
    session.commit()
    return n


# -- header breaks ------------------------------------------------------------------------------


@pytest.mark.parametrize("message_id", ["<a@b>\r\nBcc: x@y.test", "<a@b>\n", "<a\rb@c>"])
def test_task_completion_refuses_a_message_id_with_a_line_break(
        client: FlaskClient, session: Session, world: World, message_id: str):
    """Is a message_id with CR or LF refused (422 on message_id) and the task left open?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "ada@example.com")
    launch(session, world.rep, campaign, [contact.id], now=NOW)
    session.commit()
    task_id = session.scalar(select(Task.id))
    r = client.post(f"/api/tasks/{task_id}/complete", headers=world.auth(world.rep),
                    json={"message_id": message_id})
    assert "message_id" in _errors(r)
    task = session.get(Task, task_id)
    assert task is not None and task.completed_at is None and task.message_id is None


@pytest.mark.parametrize("name", ["Rita\r\nBcc: x@y.test", "Rita\n", "Rita\r"])
def test_smtp_mailbox_refuses_a_display_name_with_a_line_break(
        client: FlaskClient, world: World, name: str):
    """Is an SMTP mailbox whose display_name holds CR or LF refused on display_name?"""
    r = client.post("/api/mailbox/smtp", headers=world.auth(world.rep), json={
        "email": "rita@acme.test", "display_name": name, "smtp_host": "smtp.acme.test",
        "verify": False})
    assert "display_name" in _errors(r)
    assert client.get("/api/mailbox", headers=world.auth(world.rep)).json["connected"] is False


# -- NUL bytes, in any text field ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("post", "/api/contacts", {"email": "a@b.co", "first_name": "A\x00"}, "first_name"),
    ("post", "/api/contacts", {"email": "a@b.co", "custom_fields": {"x": "1\x002"}},
     "custom_fields.x"),
    ("post", "/api/templates", {"name": "N\x00", "subject": "s"}, "name"),
    ("post", "/api/templates", {"name": "N", "body_html": "<p>\x00</p>"}, "body_html"),
    ("post", "/api/campaigns", {"name": "C", "steps": [
        {"day": 1, "type": "call", "title": "t\x00"}]}, "steps[0].title"),
])
def test_nul_bytes_are_refused_in_any_json_text_field(
        client: FlaskClient, session: Session, world: World, method: str, path: str,
        body: dict[str, Any], field: str):
    """Is a NUL character in any text of a JSON body a 422 naming the field, nothing stored?"""
    r = getattr(client, method)(path, headers=world.auth(world.rep), json=body)
    errors = _errors(r)
    assert field in errors and "NUL" in errors[field]["message"]
    assert _count(session, Contact) == _count(session, Template) == _count(session, Campaign) == 0


def test_nul_bytes_are_refused_in_a_query_string(client: FlaskClient, world: World):
    """Is a NUL character in a query parameter a 422 naming it?"""
    r = client.get("/api/contacts?q=a%00b", headers=world.auth(world.rep))
    assert "q" in _errors(r)


def test_nul_bytes_are_refused_in_a_web_form(client: FlaskClient, session: Session,
                                             world: World):
    """Is a web form carrying a NUL character refused (422), with nothing stored?"""
    token = sign_in(client)
    r = client.post("/templates/new", data={"csrf": token, "name": "Intro", "action": "save",
                                            "subject": "Hi", "body_html": "<p>a\x00b</p>"})
    assert r.status_code == 422
    assert _count(session, Template) == 0


def test_nul_bytes_are_refused_in_a_csv_import(client: FlaskClient, session: Session,
                                               world: World):
    """Is a CSV import with a NUL character refused (422), with nothing stored?"""
    r = client.post("/api/contacts/import", headers=world.auth(world.rep),
                    data="email,first_name\na@b.co,A\x00\n", content_type="text/csv")
    assert r.status_code == 422, r.json
    assert _count(session, Contact) == 0


# -- deep nesting and far dates -----------------------------------------------------------------


def test_deeply_nested_template_is_a_422_on_save(client: FlaskClient, session: Session,
                                                 world: World):
    """Is a template of 3,000 nested parentheses refused by field (422), not a 500?"""
    r = client.post("/api/templates", headers=world.auth(world.rep),
                    json={"name": "Deep", "subject": "Hi", "body_html": NESTED})
    errors = _errors(r)
    assert "nested" in errors["body_html"]["message"]
    r = client.post("/api/templates", headers=world.auth(world.rep),
                    json={"name": "Deep", "subject": "{{" + "not " * 3000 + "first_name}}"})
    assert "subject" in _errors(r)
    assert _count(session, Template) == 0


def test_deeply_nested_template_preview_names_the_problem(client: FlaskClient, world: World):
    """Does the live preview of a deeply nested template show the problem instead of a 500?"""
    token = sign_in(client)
    r = client.post("/templates/preview", data={"csrf": token, "subject": "Hi",
                                                "body_html": NESTED})
    assert r.status_code == 422
    assert "nested" in r.get_data(as_text=True)
    r = client.post("/templates/new", data={"csrf": token, "name": "Deep", "action": "save",
                                            "subject": "Hi", "body_html": NESTED})
    assert r.status_code == 422 and "nested" in r.get_data(as_text=True)


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59Z", "9000-01-01T00:00:00+00:00"])
def test_a_start_far_in_the_future_is_refused(client: FlaskClient, session: Session,
                                              world: World, moment: str):
    """Is a plan or launch starting at 9999-12-31 a 422 on start_at (T9), not a 500?"""
    campaign = make_campaign(session, world.rep, [email_step(
        1, SendOption.TASK, make_template(session, world.rep))])
    contact = make_contact(session, world.rep, "ada@example.com")
    session.commit()
    h = world.auth(world.rep)
    query = moment.replace("+", "%2B")
    r = client.get(f"/api/campaigns/{campaign.id}/plan?start_at={query}", headers=h)
    assert _errors(r)["start_at"]["rule"] == "T9"
    r = client.post(f"/api/campaigns/{campaign.id}/launch", headers=h,
                    json={"contact_ids": [contact.id], "start_at": moment})
    assert _errors(r)["start_at"]["rule"] == "T9"


def test_a_send_at_far_in_the_future_is_refused(client: FlaskClient, session: Session,
                                                world: World):
    """Is a chosen send_at at 9999-12-31 a 422 on send_at (T9), not a 500?"""
    campaign = make_campaign(session, world.rep, [email_step(
        1, SendOption.CHOOSE_AT_LAUNCH, make_template(session, world.rep))])
    session.commit()
    r = client.get(f"/api/campaigns/{campaign.id}/plan?send_at=9999-12-31T23:59:59Z",
                   headers=world.auth(world.rep))
    assert _errors(r)["send_at"]["rule"] == "T9"


# -- sizes --------------------------------------------------------------------------------------


def test_a_body_over_max_content_length_is_a_413(client: FlaskClient, world: World,
                                                 app: Flask):
    """Is a JSON body larger than MAX_CONTENT_LENGTH a 413 JSON error, before it is parsed?"""
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    body = '{"email": "a@b.co", "first_name": "' + "x" * (3 * 1024 * 1024) + '"}'
    r = client.post("/api/contacts", headers=world.auth(world.rep), data=body,
                    content_type="application/json")
    assert r.status_code == 413
    assert r.json["error"] == "request_entity_too_large"


def test_a_csv_import_may_be_larger_than_max_content_length(client: FlaskClient, app: Flask,
                                                            world: World):
    """Is a CSV import allowed past MAX_CONTENT_LENGTH (up to its own bound) while JSON is not?"""
    app.config["MAX_CONTENT_LENGTH"] = 1000
    csv = _csv(60)
    assert len(csv) > 1000
    r = client.post("/api/contacts/import", headers=world.auth(world.rep), data=csv,
                    content_type="text/csv")
    assert r.status_code == 200 and r.json["created"] == 60
    r = client.post("/api/contacts", headers=world.auth(world.rep), content_type="application/json",
                    data='{"email": "a@b.co", "first_name": "' + "x" * 1000 + '"}')
    assert r.status_code == 413


def test_max_content_length_is_a_setting(tmp_path: Any):
    """Is MAX_CONTENT_LENGTH read from the environment as a number of bytes?"""
    from server.config import load_config

    assert load_config(tmp_path, {})["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    assert load_config(tmp_path, {"MAX_CONTENT_LENGTH": "1000"})["MAX_CONTENT_LENGTH"] == 1000


def test_a_campaign_with_too_many_steps_is_refused(client: FlaskClient, session: Session,
                                                   world: World):
    """Is a campaign of more than MAX_STEPS steps refused on steps citing C1, nothing stored?"""
    steps = [{"day": 1 + i // 10, "type": "call"} for i in range(MAX_STEPS + 1)]
    r = client.post("/api/campaigns", headers=world.auth(world.rep),
                    json={"name": "Long", "steps": steps})
    errors = _errors(r)
    assert errors["steps"]["rule"] == "C1" and str(MAX_STEPS) in errors["steps"]["message"]
    assert _count(session, CampaignStep) == 0
    r = client.post("/api/campaigns", headers=world.auth(world.rep),
                    json={"name": "Long", "steps": steps[:MAX_STEPS]})
    assert r.status_code == 201, r.json


def _csv(rows: int, start: int = 0) -> str:
    return "email,first_name\n" + "".join(f"p{i}@example.com,P{i}\n"
                                          for i in range(start, start + rows))


def test_csv_import_is_bounded(session: Session, world: World, monkeypatch: Any):
    """Is an import of more rows than the bound refused as a whole, nothing stored?"""
    monkeypatch.setattr(contacts, "MAX_IMPORT_ROWS", 20)
    report = contacts.import_csv(session, world.rep, _csv(21))
    assert not report.stored and report.errors and "20" in report.errors[0].message
    assert _count(session, Contact) == 0
    report = contacts.import_csv(session, world.rep, _csv(20))
    assert report.stored and report.created == 20


def test_csv_import_commits_in_batches(session: Session, world: World, monkeypatch: Any):
    """Does a large import commit every IMPORT_BATCH rows, so no write waits for it all?"""
    monkeypatch.setattr(contacts, "IMPORT_BATCH", 10)
    commits: list[int] = []
    rows = lambda: session.scalar(select(func.count()).select_from(Contact))  # noqa: E731

    def _after_commit(s: Session) -> None:
        commits.append(1)

    event.listen(session, "after_commit", _after_commit)
    try:
        report = contacts.import_csv(session, world.rep, _csv(25))
    finally:
        event.remove(session, "after_commit", _after_commit)
    assert report.created == 25 and rows() == 25
    assert len(commits) >= 3


def test_csv_import_with_bad_rows_still_stores_nothing(session: Session, world: World,
                                                       monkeypatch: Any):
    """Does batching keep "a file with errors stores nothing" (without skip_errors)?"""
    monkeypatch.setattr(contacts, "IMPORT_BATCH", 5)
    report = contacts.import_csv(session, world.rep, _csv(12) + "not-an-email,X\n")
    assert not report.stored and _count(session, Contact) == 0
    report = contacts.import_csv(session, world.rep, _csv(12) + "not-an-email,X\n",
                                 skip_errors=True)
    assert report.stored and report.created == 12 and _count(session, Contact) == 12
