"""Launching people into a campaign through the API: enrollments, send_at (T1), scheduled starts.

The campaign views' clock is frozen at the ``now`` fixture, Tuesday 24 November 2026 10:00 UTC
(11:00 in Paris); the worker is driven with ``tick(app, now=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.campaigns.models import Enrollment
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task
from server.worker import tick
from tests.conftest import World, make_contact, make_template


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fetch(session: Session, stmt) -> list:
    """Rows of ``stmt``; the read transaction is ended so that requests are never blocked."""
    rows = list(session.scalars(stmt))
    session.commit()
    return rows


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch, now: datetime) -> Callable[[datetime], None]:
    """The campaign and task views read this clock; it starts at ``now``."""
    def set_now(moment: datetime) -> None:
        for module in ("server.campaigns.views", "server.tasks.views"):
            monkeypatch.setattr(f"{module}.utcnow", lambda: moment)
    set_now(now)
    return set_now


def create(client: FlaskClient, world: World, steps: list[dict], **settings) -> int:
    body = {"name": "Launch test", "timezone": "Europe/Paris", "steps": steps, **settings}
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json=body)
    assert r.status_code == 201, r.json
    return r.json["id"]


def contacts(session: Session, world: World, n: int, prefix: str = "p") -> list[int]:
    made = [make_contact(session, world.rep, f"{prefix}{i}@example.com", first_name=f"P{i}")
            for i in range(n)]
    session.commit()
    return [c.id for c in made]


def do_launch(client: FlaskClient, world: World, cid: int, body: dict) -> dict:
    r = client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep), json=body)
    assert r.status_code == 201, r.json
    return r.json


def plan_of(client: FlaskClient, world: World, eid: int) -> list[dict]:
    r = client.get(f"/api/enrollments/{eid}/plan", headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    return r.json["steps"]


def test_launch_enrolls_each_person_once_and_reports_those_already_in(
        client: FlaskClient, session: Session, world: World, freeze):
    """Does a contact listed twice get one enrollment, and a second launch report who was in?"""
    a, b, c = contacts(session, world, 3)
    cid = create(client, world, [{"day": 1, "type": "call"}])
    first = do_launch(client, world, cid, {"contact_ids": [a, b, a]})
    assert sorted(e["contact_id"] for e in first["enrolled"]) == [a, b]
    assert first["already_enrolled"] == []
    second = do_launch(client, world, cid, {"contact_ids": [a, c]})
    assert [e["contact_id"] for e in second["enrolled"]] == [c]
    assert second["already_enrolled"] == [a]
    per_contact = dict(session.execute(
        select(Enrollment.contact_id, func.count()).where(Enrollment.campaign_id == cid)
        .group_by(Enrollment.contact_id)).all())
    session.commit()
    assert per_contact == {a: 1, b: 1, c: 1}
    assert fetch(session, select(func.count()).select_from(Task)) == [3]
    again = do_launch(client, world, cid, {"contact_ids": [b]})
    assert again["enrolled"] == [] and again["already_enrolled"] == [b]
    assert fetch(session, select(func.count()).select_from(Task)) == [3]


def test_T1_choose_at_launch_send_at_becomes_the_start(
        client: FlaskClient, session: Session, world: World, freeze):
    """send_at Fri 27 Nov 16:15 Paris: is the first email due then, days counted from Friday?"""
    tpl = make_template(session, world.rep)
    (a,) = contacts(session, world, 1)
    cid = create(client, world, [
        {"day": 1, "type": "email", "send_option": "choose_at_launch", "template_id": tpl.id},
        {"day": 2, "type": "email", "send_option": "same_as_previous", "template_id": tpl.id},
        {"day": 3, "type": "call"}])
    out = do_launch(client, world, cid, {"contact_ids": [a],
                                         "send_at": "2026-11-27T16:15:00+01:00"})
    assert datetime.fromisoformat(out["start"]) == utc(2026, 11, 27, 15, 15)
    assert out["scheduled"] is False
    (send,) = fetch(session, select(ScheduledSend))
    assert send.status is SendStatus.SCHEDULED
    assert send.due_at == utc(2026, 11, 27, 15, 15)
    assert send.to_email == "p0@example.com"
    steps = plan_of(client, world, out["enrolled"][0]["enrollment_id"])
    assert [s["due_local"] for s in steps] == [
        "2026-11-27T16:15:00+01:00", "2026-11-28T16:15:00+01:00", "2026-11-29T16:15:00+01:00"]
    assert [s["rule"] for s in steps] == ["choose_at_launch", "same_as_previous", "task"]
    assert [s["status"] for s in steps] == ["active", "pending", "pending"]


def test_T1_at_time_first_step_and_its_override(
        client: FlaskClient, session: Session, world: World, freeze):
    """At_time 09:00 first step: at once when 09:00 has passed; at the override when given?"""
    tpl = make_template(session, world.rep)
    plain, overridden = contacts(session, world, 2)
    cid = create(client, world, [
        {"day": 1, "type": "email", "send_option": "at_time", "send_time": "09:00",
         "template_id": tpl.id},
        {"day": 2, "type": "call"}])
    out = do_launch(client, world, cid, {"contact_ids": [plain]})
    steps = plan_of(client, world, out["enrolled"][0]["enrollment_id"])
    # 09:00 Paris had passed at 11:00 Paris: at once, never before the start (T2).
    assert [(s["due_at"], s["rule"]) for s in steps] == [
        ("2026-11-24T10:00:00Z", "at_once"), ("2026-11-25T10:00:00Z", "task")]

    out = do_launch(client, world, cid, {"contact_ids": [overridden],
                                         "send_at": "2026-11-25T14:00:00+01:00"})
    eid = out["enrolled"][0]["enrollment_id"]
    steps = plan_of(client, world, eid)
    assert [(s["due_at"], s["rule"]) for s in steps] == [
        ("2026-11-25T13:00:00Z", "at_time_override"), ("2026-11-26T13:00:00Z", "task")]
    (send,) = fetch(session, select(ScheduledSend).where(ScheduledSend.enrollment_id == eid))
    assert send.due_at == utc(2026, 11, 25, 13, 0)


def test_T1_friday_afternoon_launch_with_skip_weekends(
        client: FlaskClient, session: Session, world: World, freeze):
    """Launched Fri 27 Nov 15:30 Paris with skip_weekends, are days 2 and 3 Mon 30 and Tue 1?"""
    freeze(utc(2026, 11, 27, 14, 30))
    tpl = make_template(session, world.rep)
    (a,) = contacts(session, world, 1)
    cid = create(client, world, [
        {"day": 1, "type": "call"},
        {"day": 2, "type": "email", "send_option": "task", "template_id": tpl.id},
        {"day": 3, "type": "inmail"}], skip_weekends=True)
    out = do_launch(client, world, cid, {"contact_ids": [a]})
    steps = plan_of(client, world, out["enrolled"][0]["enrollment_id"])
    assert [s["due_local"] for s in steps] == [
        "2026-11-27T15:30:00+01:00", "2026-11-30T15:30:00+01:00", "2026-12-01T15:30:00+01:00"]
    (task,) = fetch(session, select(Task))
    assert task.due_at == utc(2026, 11, 27, 14, 30)


@pytest.mark.parametrize(("first", "body", "field", "rule"), [
    ({"send_option": "choose_at_launch"}, {}, "send_at", "S1"),
    ({"send_option": "choose_at_launch"}, {"send_at": "2026-11-24T09:00:00Z"}, "send_at", "T2"),
    ({"send_option": "task"}, {"send_at": "2026-11-25T09:00:00Z"}, "send_at", "S1"),
    ({"send_option": "task"}, {"start_at": "2026-11-23T09:00:00Z"}, "start_at", None),
])
def test_S1_T2_bad_launch_is_422_and_stores_nothing(
        client: FlaskClient, session: Session, world: World, freeze, first: dict, body: dict,
        field: str, rule: str | None):
    """Is a missing/past/misplaced send_at or a past start a 422 naming field and rule?"""
    tpl = make_template(session, world.rep)
    (a,) = contacts(session, world, 1)
    cid = create(client, world, [{"day": 1, "type": "email", "template_id": tpl.id, **first}])
    r = client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep),
                    json={"contact_ids": [a], **body})
    assert r.status_code == 422, r.json
    assert [(e["field"], e.get("rule")) for e in r.json["errors"]] == [(field, rule)]
    assert fetch(session, select(func.count()).select_from(Enrollment)) == [0]


def test_T6_scheduled_start_queues_nothing_until_the_worker_reaches_it(
        app: Flask, client: FlaskClient, session: Session, world: World, freeze):
    """Start Thu 26 Nov 08:00: no task until a worker tick at/after 08:00 makes it appear once?"""
    a, b = contacts(session, world, 2)
    cid = create(client, world, [{"day": 1, "type": "call"}, {"day": 2, "type": "call"}])
    out = do_launch(client, world, cid, {"contact_ids": [a, b],
                                         "start_at": "2026-11-26T08:00:00Z"})
    assert out["scheduled"] is True and datetime.fromisoformat(out["start"]) == utc(2026, 11, 26, 8)
    eid = out["enrolled"][0]["enrollment_id"]
    h = world.auth(world.rep)
    assert client.get(f"/api/enrollments/{eid}", headers=h).json["status"] == "scheduled"
    assert client.get("/api/tasks?due=all", headers=h).json["total"] == 0
    assert [s["status"] for s in plan_of(client, world, eid)] == ["pending", "pending"]

    assert tick(app, now=utc(2026, 11, 26, 7, 59)).started == 0
    assert client.get("/api/tasks?due=all", headers=h).json["total"] == 0

    assert tick(app, now=utc(2026, 11, 26, 8, 0)).started == 2
    tasks = client.get("/api/tasks?due=all", headers=h).json
    assert tasks["total"] == 2
    assert {t["due_at"] for t in tasks["items"]} == {"2026-11-26T08:00:00Z"}
    assert client.get(f"/api/enrollments/{eid}", headers=h).json["status"] == "active"
    assert [s["status"] for s in plan_of(client, world, eid)] == ["active", "pending"]

    assert tick(app, now=utc(2026, 11, 26, 9, 0)).started == 0
    assert client.get("/api/tasks?due=all", headers=h).json["total"] == 2


def test_T6_scheduled_start_of_an_automatic_email_waits_for_the_worker(
        app: Flask, client: FlaskClient, session: Session, world: World, freeze):
    """Is the at_time first email of a scheduled person put in the outbox only by the worker?"""
    tpl = make_template(session, world.rep)
    (a,) = contacts(session, world, 1)
    cid = create(client, world, [{"day": 1, "type": "email", "send_option": "at_time",
                                  "send_time": "09:30", "template_id": tpl.id}])
    do_launch(client, world, cid, {"contact_ids": [a], "start_at": "2026-11-26T07:00:00Z"})
    assert fetch(session, select(ScheduledSend)) == []
    tick(app, now=utc(2026, 11, 26, 7, 0))
    (send,) = fetch(session, select(ScheduledSend))
    assert send.due_at == utc(2026, 11, 26, 8, 30)  # 09:30 Paris on the start's day


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(together=st.integers(min_value=1, max_value=6),
       first=st.sampled_from(["choose_at_launch", "at_time", "task"]),
       skip_weekends=st.booleans())
def test_T1_P1_plan_does_not_depend_on_how_many_are_launched_together(
        client: FlaskClient, session: Session, world: World, freeze, together: int, first: str,
        skip_weekends: bool):
    """Is each person's plan the same whether launched alone or with up to five others?"""
    tpl = make_template(session, world.rep, name=f"T{together}{first}{skip_weekends}")
    session.commit()
    step0 = {"day": 1, "type": "email", "send_option": first, "template_id": tpl.id}
    if first == "at_time":
        step0["send_time"] = "16:45"
    cid = create(client, world, [
        step0, {"day": 2, "type": "call"},
        {"day": 4, "type": "email", "send_option": "same_as_previous", "template_id": tpl.id},
        {"day": 4, "type": "custom"}], skip_weekends=skip_weekends)
    base = {"send_at": "2026-11-27T17:05:00+01:00"} if first == "choose_at_launch" else {}
    prefix = f"h{cid}-"
    alone_id, *group = contacts(session, world, together + 1, prefix)
    alone = do_launch(client, world, cid, {"contact_ids": [alone_id], **base})
    reference = plan_of(client, world, alone["enrolled"][0]["enrollment_id"])
    launched = do_launch(client, world, cid, {"contact_ids": group, **base})
    assert len(launched["enrolled"]) == together
    for e in launched["enrolled"]:
        assert plan_of(client, world, e["enrollment_id"]) == reference
