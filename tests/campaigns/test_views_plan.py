"""The plan endpoints (P1): a preview before launch and a person's plan as steps get done.

The campaign runs in Europe/Paris (UTC+1 in November 2026). The views' clock is frozen at
Tuesday 24 November 2026 06:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.progress import send_finished
from server.sending.models import ScheduledSend, SendStatus
from tests.conftest import World, make_contact, make_template

NOW = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the clock of the campaign and task views at ``NOW``."""
    for module in ("server.campaigns.views", "server.tasks.views"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: NOW)


@pytest.fixture
def setup(client: FlaskClient, session: Session, world: World, frozen) -> tuple[int, int]:
    """A five-step campaign (and a contact) that uses at_time, same_as_previous and tasks."""
    tpl = make_template(session, world.rep)
    contact = make_contact(session, world.rep, "ada@example.com")
    session.commit()
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "Plan", "timezone": "Europe/Paris", "steps": [
            {"day": 1, "type": "email", "send_option": "at_time", "send_time": "09:30",
             "template_id": tpl.id},
            {"day": 2, "type": "email", "send_option": "same_as_previous", "follow_up": True,
             "template_id": tpl.id},
            {"day": 2, "type": "call"},
            {"day": 3, "type": "email", "send_option": "same_as_previous",
             "template_id": tpl.id},
            {"day": 5, "type": "email", "send_option": "task", "template_id": tpl.id}]})
    assert r.status_code == 201, r.json
    return r.json["id"], contact.id


def test_P1_preview_gives_every_step_its_moment_in_utc_and_local_with_its_rule(
        client: FlaskClient, world: World, setup: tuple[int, int]):
    """Does the preview for a start on Tue 24 Nov 08:00 Paris show each moment and why?"""
    cid, contact_id = setup
    r = client.get(f"/api/campaigns/{cid}/plan?contact_id={contact_id}"
                   "&start_at=2026-11-24T07:00:00Z", headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    plan = r.json
    assert (plan["campaign_id"], plan["contact_id"], plan["enrollment_id"]) == (
        cid, contact_id, None)
    assert plan["timezone"] == "Europe/Paris" and plan["start"] == "2026-11-24T07:00:00Z"
    steps = plan["steps"]
    assert [(s["due_at"], s["due_local"]) for s in steps] == [
        ("2026-11-24T08:30:00Z", "2026-11-24T09:30:00+01:00"),
        ("2026-11-25T08:30:00Z", "2026-11-25T09:30:00+01:00"),
        ("2026-11-25T08:30:00Z", "2026-11-25T09:30:00+01:00"),
        ("2026-11-26T08:30:00Z", "2026-11-26T09:30:00+01:00"),
        ("2026-11-28T07:00:00Z", "2026-11-28T08:00:00+01:00")]
    assert [s["rule"] for s in steps] == [
        "at_time", "same_as_previous", "after_previous", "same_as_previous", "task"]
    assert [s["explanation"] for s in steps] == [
        "day 1 (Tue 24 Nov), at 09:30 (T2)",
        "day 2 (Wed 25 Nov), same time as previous email (day 1, 09:30) (T3)",
        "day 2 (Wed 25 Nov), call task due at the campaign start time (08:00) (T4); "
        "goes right after the previous step, due at 09:30 (T5)",
        "day 3 (Thu 26 Nov), same time as previous email (day 2, 09:30) (T3); "
        "after task on day 2 is done (T6)",
        "day 5 (Sat 28 Nov), email task due at the campaign start time (08:00) (T4); "
        "after task on day 2 is done (T6)"]
    assert [s["depends_on"] for s in steps] == [None, None, None, 2, 2]
    assert [(s["day"], s["step"]) for s in steps] == [(1, 1), (2, 1), (2, 2), (3, 1), (5, 1)]
    assert {s["status"] for s in steps} == {"preview"}
    assert {s["done_at"] for s in steps} == {None}


def test_P1_preview_without_start_at_starts_now(client: FlaskClient, world: World,
                                                setup: tuple[int, int]):
    """Without start_at, is the preview planned from now (07:00 Paris), 09:30 still ahead?"""
    cid, _ = setup
    r = client.get(f"/api/campaigns/{cid}/plan", headers=world.auth(world.rep))
    assert r.status_code == 200
    assert r.json["start"] == "2026-11-24T06:00:00Z" and r.json["contact_id"] is None
    assert r.json["steps"][0]["due_at"] == "2026-11-24T08:30:00Z"
    assert r.json["steps"][4]["due_local"] == "2026-11-28T07:00:00+01:00"


@pytest.mark.parametrize(("query", "status", "field"), [
    ("start_at=2026-11-23T07:00:00Z", 422, "start_at"),  # in the past
    ("start_at=tomorrow", 422, "start_at"),
    ("start_at=2026-11-25T07:00:00", 422, "start_at"),  # no offset
    ("send_at=2026-11-25T07:00:00Z&start_at=2026-11-25T07:00:00Z", 422, "start_at"),
    ("contact_id=999999", 404, None),
    ("colour=red", 422, "colour"),
])
def test_P1_preview_bad_input(client: FlaskClient, world: World, setup: tuple[int, int],
                              query: str, status: int, field: str | None):
    """Is a bad preview query refused with the status and the field it concerns?"""
    cid, _ = setup
    r = client.get(f"/api/campaigns/{cid}/plan?{query}", headers=world.auth(world.rep))
    assert r.status_code == status, r.json
    if field is not None:
        assert field in [e["field"] for e in r.json["errors"]]


def test_P1_preview_of_another_orgs_campaign_or_another_reps_contact_is_404(
        client: FlaskClient, session: Session, world: World, setup: tuple[int, int]):
    """Is a campaign of another org, or a colleague's contact, hidden from a preview?"""
    cid, contact_id = setup
    assert client.get(f"/api/campaigns/{cid}/plan",
                      headers=world.auth(world.outsider)).status_code == 404
    r = client.get(f"/api/campaigns/{cid}/plan?contact_id={contact_id}",
                   headers=world.auth(world.rep2))
    assert r.status_code == 404
    assert client.get(f"/api/campaigns/{cid}/plan",
                      headers=world.auth(world.rep2)).status_code == 200


def _sent(session: Session, enrollment_id: int, sent_at: datetime) -> None:
    """Stand in for the dispatcher: the person's scheduled email left at ``sent_at``."""
    send = session.scalar(select(ScheduledSend).where(
        ScheduledSend.enrollment_id == enrollment_id,
        ScheduledSend.status == SendStatus.SCHEDULED))
    send.status, send.sent_at = SendStatus.SENT, sent_at
    assert send_finished(session, send.id, sent_at)
    session.commit()


def test_P1_T3_T6_enrollment_plan_shows_done_steps_and_what_waits_for_the_call(
        client: FlaskClient, session: Session, world: World, setup: tuple[int, int]):
    """After two sent emails: done_at shown, later steps depend on the open call, until done?"""
    cid, contact_id = setup
    h = world.auth(world.rep)
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={"contact_ids": [contact_id]})
    eid = r.json["enrolled"][0]["enrollment_id"]
    _sent(session, eid, utc(2026, 11, 24, 8, 30, 40))
    _sent(session, eid, utc(2026, 11, 25, 8, 32))  # Wed 09:32 Paris

    r = client.get(f"/api/enrollments/{eid}/plan", headers=h)
    assert r.status_code == 200, r.json
    plan = r.json
    assert (plan["enrollment_id"], plan["contact_id"]) == (eid, contact_id)
    steps = plan["steps"]
    assert [s["status"] for s in steps] == ["done", "done", "active", "pending", "pending"]
    assert [s["done_at"] for s in steps] == [
        "2026-11-24T08:30:40Z", "2026-11-25T08:32:00Z", None, None, None]
    assert [s["depends_on"] for s in steps] == [None, None, None, 2, 2]
    # The call waits for the day-2 email, which went out at 09:32 (T5).
    assert steps[2]["due_at"] == "2026-11-25T08:32:00Z"
    # Day 3 copies the day-2 email's real time of day (T3).
    assert steps[3]["due_local"] == "2026-11-26T09:32:00+01:00"
    assert steps[3]["explanation"] == (
        "day 3 (Thu 26 Nov), same time as previous email (day 2, sent at 09:32) (T3); "
        "after task on day 2 is done (T6)")

    call = client.get("/api/tasks", headers=h).json["items"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("server.tasks.views.utcnow", lambda: utc(2026, 11, 25, 15, 0))
        assert client.post(f"/api/tasks/{call['id']}/complete", headers=h).status_code == 200
    steps = client.get(f"/api/enrollments/{eid}/plan", headers=h).json["steps"]
    assert [s["status"] for s in steps] == ["done", "done", "done", "active", "pending"]
    assert steps[2]["done_at"] == "2026-11-25T15:00:00Z"
    assert [s["depends_on"] for s in steps] == [None] * 5
    assert steps[3]["due_at"] == "2026-11-26T08:32:00Z"


def test_P1_enrollment_plan_of_another_rep_is_404(client: FlaskClient, world: World,
                                                 setup: tuple[int, int]):
    """Can a colleague or another org read a person's plan or enrollment? (No: 404.)"""
    cid, contact_id = setup
    r = client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep),
                    json={"contact_ids": [contact_id]})
    eid = r.json["enrolled"][0]["enrollment_id"]
    for user in (world.rep2, world.outsider):
        assert client.get(f"/api/enrollments/{eid}/plan",
                          headers=world.auth(user)).status_code == 404
        assert client.get(f"/api/enrollments/{eid}", headers=world.auth(user)).status_code == 404
    assert client.get("/api/enrollments/999999/plan",
                      headers=world.auth(world.rep)).status_code == 404
