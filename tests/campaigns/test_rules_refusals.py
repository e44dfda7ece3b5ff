"""Every refusal of a campaign names its field and its rule (S5), malformed values included.

The rules the document decided last are enforced: C1 (the first step is on day 1) and T9.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.tasks.models import Task
from tests.conftest import World, email_step, make_campaign, make_contact, make_template


def _campaign(session: Session, world: World, **first: Any) -> dict[str, Any]:
    tpl = make_template(session, world.rep)
    session.commit()
    step = {"day": 1, "type": "email", "send_option": "at_time", "send_time": "09:00",
            "template_id": tpl.id}
    second = {"day": 2, "type": "email", "send_option": "same_as_previous",
              "template_id": tpl.id}
    return {"name": "C", "timezone": "UTC", "steps": [{**step, **first}, second]}


@pytest.mark.parametrize(("where", "change", "field", "rule"), [
    (0, {"send_time": "9:05"}, "steps[0].send_time", "S1"),
    (1, {"send_option": "at_time", "send_time": "25:00"}, "steps[1].send_time", "S2"),
    (0, {"send_option": "whenever"}, "steps[0].send_option", "S1"),
    (1, {"send_option": "whenever"}, "steps[1].send_option", "S2"),
    (0, {"type": "sms"}, "steps[0].type", "C1"),
    (1, {"day": 1.5}, "steps[1].day", "C1"),
    (0, {"follow_up": "yes"}, "steps[0].follow_up", "S4"),
    (0, {"colour": "red"}, "steps[0].colour", "S5"),
    (None, {"on_reply": "maybe"}, "on_reply", "C3"),
    (None, {"skip_weekends": "sometimes"}, "skip_weekends", "C3"),
    (None, {"speed": "fast"}, "speed", "S5"),
])
def test_malformed_values_name_their_rule(client: FlaskClient, session: Session, world: World,
                                          where: int | None, change: dict[str, Any],
                                          field: str, rule: str):
    """Is a malformed value refused with its field and the rule it breaks (S5)?"""
    body = _campaign(session, world)
    if where is None:
        body.update(change)
    else:
        body["steps"][where].update(change)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json=body)
    assert r.status_code == 422, r.json
    errors = {e["field"]: e for e in r.json["errors"]}
    assert field in errors, errors
    assert errors[field].get("rule") == rule, errors[field]
    assert all(e.get("rule") for e in r.json["errors"]), r.json["errors"]


def test_every_save_refusal_names_a_rule(client: FlaskClient, session: Session, world: World):
    """Does a refusal for an unknown template also name its rule (S5: every refusal)?"""
    body = _campaign(session, world, template_id=999999)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json=body)
    assert r.status_code == 422
    assert all(e.get("rule") for e in r.json["errors"]), r.json["errors"]


def test_the_first_step_is_on_day_1(client: FlaskClient, session: Session, world: World):
    """Is a campaign whose first step is on day 2 refused on steps[0].day (C1)?"""
    body = _campaign(session, world)
    body["steps"] = [{"day": 2, "type": "call"}, {"day": 3, "type": "call"}]
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json=body)
    assert r.status_code == 422
    errors = {e["field"]: e for e in r.json["errors"]}
    assert errors["steps[0].day"]["rule"] == "C1"
    body["steps"][0]["day"] = 1
    assert client.post("/api/campaigns", headers=world.auth(world.rep),
                       json=body).status_code == 201


@pytest.mark.parametrize(("send_at", "ok"), [
    ("2026-11-28T10:00:00+00:00", False),  # a Saturday
    ("2026-11-29T23:30:00+00:00", True),   # Monday 30 November 00:30 in Paris
    ("2026-11-30T10:00:00+00:00", True),   # a Monday
])
def test_a_chosen_moment_on_a_weekend_is_refused_with_skip_weekends(
        client: FlaskClient, session: Session, world: World, monkeypatch: Any,
        send_at: str, ok: bool):
    """With skip_weekends, is a chosen send_at on a local Saturday or Sunday refused (T9)?"""
    monkeypatch.setattr("server.campaigns.views.utcnow",
                        lambda: datetime(2026, 11, 24, 10, tzinfo=UTC))
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.CHOOSE_AT_LAUNCH,
                                                             tpl)],
                             timezone="Europe/Paris", skip_weekends=True)
    contact = make_contact(session, world.rep, "ada@example.com")
    session.commit()
    h = world.auth(world.rep)
    r = client.get(f"/api/campaigns/{campaign.id}/plan",
                   query_string={"send_at": send_at}, headers=h)
    if ok:
        assert r.status_code == 200, r.json
        return
    assert r.status_code == 422
    errors = {e["field"]: e for e in r.json["errors"]}
    assert errors["send_at"]["rule"] == "T9" and "weekend" in errors["send_at"]["message"]
    r = client.post(f"/api/campaigns/{campaign.id}/launch", headers=h,
                    json={"contact_ids": [contact.id], "send_at": send_at})
    assert r.status_code == 422 and r.json["errors"][0]["rule"] == "T9"


def test_sent_at_must_be_between_the_tasks_creation_and_now(
        client: FlaskClient, session: Session, world: World, monkeypatch: Any):
    """Is a sent_at before the task existed refused (T9), and one in between accepted?"""
    created = datetime(2026, 11, 24, 10, tzinfo=UTC)
    monkeypatch.setattr("server.tasks.views.utcnow",
                        lambda: datetime(2026, 11, 25, 10, tzinfo=UTC))
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "ada@example.com")
    launch(session, world.rep, campaign, [contact.id], now=created)
    session.commit()
    task = session.scalars(select(Task)).one()
    task.created_at = created  # rows are stamped by the wall clock; this test's is fixed
    session.commit()
    task_id = task.id
    h = world.auth(world.rep)
    r = client.post(f"/api/tasks/{task_id}/complete", headers=h,
                    json={"sent_at": "2026-11-20T10:00:00+00:00"})
    assert r.status_code == 422
    assert r.json["errors"][0]["field"] == "sent_at" and r.json["errors"][0]["rule"] == "T9"
    r = client.post(f"/api/tasks/{task_id}/complete", headers=h,
                    json={"sent_at": "2026-11-26T10:00:00+00:00"})
    assert r.status_code == 422 and r.json["errors"][0]["rule"] == "T9"
    r = client.post(f"/api/tasks/{task_id}/complete", headers=h,
                    json={"sent_at": "2026-11-24T15:00:00+00:00"})
    assert r.status_code == 200, r.json
