"""The Command Center API: due windows in the rep's time zone, filters, paging, actions, 404s.

Tasks are made the real way (a one-step campaign launched at the moment the task should be due)
and the task views' clock is frozen with ``monkeypatch``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.accounts.service import create_token
from server.campaigns.launch import launch
from server.campaigns.models import Campaign
from server.campaigns.spec import SendOption, StepType
from server.tasks.models import Task
from tests.conftest import (
    World,
    email_step,
    make_campaign,
    make_contact,
    make_template,
    make_user,
    task_step,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Set the clock the task views read."""
    def set_now(moment: datetime) -> None:
        monkeypatch.setattr("server.tasks.views.utcnow", lambda: moment)
    return set_now


class Rep:
    """A rep with a token, and a way to give them a task due at a given moment."""

    def __init__(self, session: Session, world: World, email: str, timezone: str) -> None:
        self.session = session
        self.user: User = make_user(session, world.org, email, timezone=timezone)
        self.headers = {"Authorization": f"Bearer {create_token(session, self.user)}"}
        tpl = make_template(session, self.user)
        self.campaigns: dict[StepType, Campaign] = {
            StepType.CALL: make_campaign(session, self.user, [task_step(1)], name="Calls"),
            StepType.INMAIL: make_campaign(session, self.user,
                                           [task_step(1, StepType.INMAIL)], name="InMails"),
            StepType.EMAIL: make_campaign(session, self.user,
                                          [email_step(1, SendOption.TASK, tpl)], name="Emails"),
        }
        session.commit()
        self.n = 0

    def task(self, due: datetime, kind: StepType = StepType.CALL) -> int:
        """A new task of ``kind`` due at ``due`` (a person added to a campaign then)."""
        self.n += 1
        contact = make_contact(self.session, self.user, f"{self.user.id}-{self.n}@example.com",
                               first_name=f"P{self.n}", last_name="", company="Initech")
        launch(self.session, self.user, self.campaigns[kind], [contact.id], now=due)
        self.session.commit()
        task_id = self.session.scalar(select(Task.id).where(Task.contact_id == contact.id))
        assert task_id is not None
        return task_id


def ids(client: FlaskClient, rep: Rep, query: str) -> list[int]:
    r = client.get(f"/api/tasks?{query}", headers=rep.headers)
    assert r.status_code == 200, r.json
    return [t["id"] for t in r.json["items"]]


def test_due_filters_are_computed_in_an_auckland_reps_day(
        client: FlaskClient, session: Session, world: World, freeze):
    """At 23:30 Tue 24 Nov in Auckland (10:30 UTC), does each due window use Auckland days?"""
    kiwi = Rep(session, world, "kiwi@a.test", "Pacific/Auckland")  # UTC+13 in November
    mon_2359 = kiwi.task(utc(2026, 11, 23, 10, 59))
    tue_0000 = kiwi.task(utc(2026, 11, 23, 11, 0))
    tue_2359 = kiwi.task(utc(2026, 11, 24, 10, 59))
    wed_0000 = kiwi.task(utc(2026, 11, 24, 11, 0))  # still Tue 24 in UTC
    thu_0000 = kiwi.task(utc(2026, 11, 25, 11, 0))
    mon30_2359 = kiwi.task(utc(2026, 11, 30, 10, 59))
    dec1_0000 = kiwi.task(utc(2026, 11, 30, 11, 0))
    freeze(utc(2026, 11, 24, 10, 30))

    assert ids(client, kiwi, "due=overdue") == [mon_2359]
    assert ids(client, kiwi, "due=today") == [tue_0000, tue_2359]
    assert ids(client, kiwi, "due=tomorrow") == [wed_0000]
    assert ids(client, kiwi, "due=next7") == [tue_0000, tue_2359, wed_0000, thu_0000, mon30_2359]
    everything = [mon_2359, tue_0000, tue_2359, wed_0000, thu_0000, mon30_2359, dec1_0000]
    assert ids(client, kiwi, "due=all") == everything
    assert ids(client, kiwi, "") == everything  # due defaults to all

    # One minute later it is Wednesday in Auckland: the windows move with the rep's day.
    freeze(utc(2026, 11, 24, 11, 0))
    assert ids(client, kiwi, "due=today") == [wed_0000]
    assert ids(client, kiwi, "due=overdue") == [mon_2359, tue_0000, tue_2359]


def test_due_filters_are_computed_in_a_los_angeles_reps_day(
        client: FlaskClient, session: Session, world: World, freeze):
    """At 23:30 Mon 23 Nov in Los Angeles (07:30 UTC Tue), is a task due 00:00 PST tomorrow?"""
    angeleno = Rep(session, world, "la@a.test", "America/Los_Angeles")  # UTC-8 in November
    sun_2359 = angeleno.task(utc(2026, 11, 23, 7, 59))
    mon_2300 = angeleno.task(utc(2026, 11, 24, 7, 0))  # Tuesday in UTC, Monday in LA
    tue_0000 = angeleno.task(utc(2026, 11, 24, 8, 0))
    freeze(utc(2026, 11, 24, 7, 30))
    assert ids(client, angeleno, "due=overdue") == [sun_2359]
    assert ids(client, angeleno, "due=today") == [mon_2300]
    assert ids(client, angeleno, "due=tomorrow") == [tue_0000]
    r = client.get(f"/api/tasks/{mon_2300}", headers=angeleno.headers)
    assert r.json["due_local"] == "2026-11-23T23:00:00-08:00"


def test_type_campaign_and_status_filters(client: FlaskClient, session: Session, world: World,
                                          freeze):
    """Do type=, campaign_id= and status= each narrow the list, and combine with due=?"""
    rep = Rep(session, world, "filter@a.test", "UTC")
    call = rep.task(utc(2026, 11, 24, 9, 0), StepType.CALL)
    inmail = rep.task(utc(2026, 11, 24, 9, 5), StepType.INMAIL)
    email = rep.task(utc(2026, 11, 24, 9, 10), StepType.EMAIL)
    call_done = rep.task(utc(2026, 11, 24, 9, 15), StepType.CALL)
    inmail_skipped = rep.task(utc(2026, 11, 25, 9, 0), StepType.INMAIL)
    freeze(utc(2026, 11, 24, 12, 0))
    assert client.post(f"/api/tasks/{call_done}/complete", headers=rep.headers).status_code == 200
    assert client.post(f"/api/tasks/{inmail_skipped}/skip",
                       headers=rep.headers).status_code == 200

    assert ids(client, rep, "type=call") == [call]
    assert ids(client, rep, "type=inmail") == [inmail]
    assert ids(client, rep, "type=email") == [email]
    assert ids(client, rep, "type=custom") == []
    assert ids(client, rep, f"campaign_id={rep.campaigns[StepType.CALL].id}") == [call]
    assert ids(client, rep, "status=open") == [call, inmail, email]
    assert ids(client, rep, "status=done") == [call_done]
    assert ids(client, rep, "status=skipped") == [inmail_skipped]
    assert ids(client, rep, "status=skipped&due=today") == []
    assert ids(client, rep, "status=skipped&due=tomorrow&type=inmail") == [inmail_skipped]
    assert ids(client, rep, "status=done&type=inmail") == []


def test_pagination_reports_total_and_next_page(client: FlaskClient, session: Session,
                                                 world: World, freeze):
    """With 5 tasks and per_page=2, do pages 1-3 hold 2, 2, 1 tasks in due order, then none?"""
    rep = Rep(session, world, "pages@a.test", "UTC")
    made = [rep.task(utc(2026, 11, 24, 9, m)) for m in (40, 10, 30, 0, 20)]
    in_order = [made[3], made[1], made[4], made[2], made[0]]
    freeze(utc(2026, 11, 24, 12, 0))
    seen = []
    expected_next = {1: 2, 2: 3, 3: None}
    for page in (1, 2, 3):
        r = client.get(f"/api/tasks?per_page=2&page={page}", headers=rep.headers)
        body = r.json
        assert (body["total"], body["page"], body["per_page"]) == (5, page, 2)
        assert body["next_page"] == expected_next[page]
        seen += [t["id"] for t in body["items"]]
    assert seen == in_order
    r = client.get("/api/tasks?per_page=2&page=4", headers=rep.headers)
    assert r.json["items"] == [] and r.json["total"] == 5 and r.json["next_page"] is None


@pytest.mark.parametrize(("query", "field"), [
    ("due=yesterday", "due"),
    ("type=fax", "type"),
    ("status=pending", "status"),
    ("campaign_id=abc", "campaign_id"),
    ("page=0", "page"),
    ("per_page=201", "per_page"),
    ("per_page=x", "per_page"),
    ("colour=red", "colour"),
])
def test_invalid_filter_value_is_422_naming_the_field(client: FlaskClient, world: World,
                                                       query: str, field: str):
    """Is a bad filter value answered 422 with an error for exactly that field?"""
    r = client.get(f"/api/tasks?{query}", headers=world.auth(world.rep))
    assert r.status_code == 422, r.json
    assert [e["field"] for e in r.json["errors"]] == [field]


def test_read_one_task(client: FlaskClient, session: Session, world: World, freeze):
    """Does GET /api/tasks/{id} show the task with its contact, campaign and local due time?"""
    kiwi = Rep(session, world, "kiwi@a.test", "Pacific/Auckland")
    tid = kiwi.task(utc(2026, 11, 24, 9, 0), StepType.EMAIL)
    r = client.get(f"/api/tasks/{tid}", headers=kiwi.headers)
    assert r.status_code == 200
    t = r.json
    assert (t["id"], t["type"], t["status"], t["day"], t["step"]) == (tid, "email", "open", 1, 1)
    assert t["campaign"]["name"] == "Emails"
    assert t["contact"]["name"] == "P1" and t["contact"]["company"] == "Initech"
    assert t["title"] == "Email P1"
    assert t["due_at"] == "2026-11-24T09:00:00Z"
    assert t["due_local"] == "2026-11-24T22:00:00+13:00"
    assert (t["completed_at"], t["sent_at"], t["message_id"], t["via"]) == (None,) * 4


def test_complete_records_how_and_twice_is_harmless(client: FlaskClient, session: Session,
                                                    world: World, freeze):
    """Does complete store sent_at, message_id and via, and a repeat answer changed: false?"""
    rep = Rep(session, world, "done@a.test", "UTC")
    tid = rep.task(utc(2026, 11, 24, 9, 0), StepType.EMAIL)
    freeze(utc(2026, 11, 24, 16, 0))
    body = {"sent_at": "2026-11-24T15:47:00+01:00", "message_id": "<abc@mail.gmail.com>",
            "via": "gmail"}
    r = client.post(f"/api/tasks/{tid}/complete", headers=rep.headers, json=body)
    assert r.status_code == 200, r.json
    assert r.json["changed"] is True
    task = r.json["task"]
    assert task["status"] == "done"
    assert task["sent_at"] == "2026-11-24T14:47:00Z"
    assert task["completed_at"] == "2026-11-24T16:00:00Z"
    assert (task["message_id"], task["via"]) == ("<abc@mail.gmail.com>", "gmail")

    freeze(utc(2026, 11, 24, 17, 0))
    r = client.post(f"/api/tasks/{tid}/complete", headers=rep.headers,
                    json={"via": "outlook", "message_id": "<other@x>"})
    assert r.status_code == 200
    assert r.json["changed"] is False
    assert r.json["task"] == task  # the first completion stands
    r = client.post(f"/api/tasks/{tid}/skip", headers=rep.headers)
    assert r.status_code == 409


def test_skip_twice_is_harmless_and_complete_after_skip_is_409(
        client: FlaskClient, session: Session, world: World, freeze):
    """Is a second skip changed: false, and completing a skipped task refused with 409?"""
    rep = Rep(session, world, "skip@a.test", "UTC")
    tid = rep.task(utc(2026, 11, 24, 9, 0))
    freeze(utc(2026, 11, 24, 12, 0))
    r = client.post(f"/api/tasks/{tid}/skip", headers=rep.headers)
    assert r.status_code == 200 and r.json["changed"] is True
    assert r.json["task"]["status"] == "skipped"
    r = client.post(f"/api/tasks/{tid}/skip", headers=rep.headers, json={})
    assert r.status_code == 200 and r.json["changed"] is False
    r = client.post(f"/api/tasks/{tid}/complete", headers=rep.headers)
    assert r.status_code == 409
    assert "skipped" in r.json["message"]
    assert client.get(f"/api/tasks/{tid}", headers=rep.headers).json["status"] == "skipped"


@pytest.mark.parametrize(("body", "field"), [
    ({"sent_at": "2026-11-24T12:05:00Z"}, "sent_at"),  # in the future
    ({"sent_at": "2026-11-24T11:00:00"}, "sent_at"),  # naive
    ({"via": "carrier-pigeon"}, "via"),
    ({"note": "x"}, "note"),
])
def test_complete_with_bad_input_is_422_and_changes_nothing(
        client: FlaskClient, session: Session, world: World, freeze, body: dict, field: str):
    """Is a bad completion answered 422 naming the field, leaving the task open?"""
    rep = Rep(session, world, "bad@a.test", "UTC")
    tid = rep.task(utc(2026, 11, 24, 9, 0), StepType.EMAIL)
    freeze(utc(2026, 11, 24, 12, 0))
    r = client.post(f"/api/tasks/{tid}/complete", headers=rep.headers, json=body)
    assert r.status_code == 422, r.json
    assert [e["field"] for e in r.json["errors"]] == [field]
    assert client.get(f"/api/tasks/{tid}", headers=rep.headers).json["status"] == "open"


def test_opened_records_first_open_once_with_a_feed_event(client: FlaskClient,
                                                          session: Session, world: World,
                                                          freeze):
    """Does the first open record when and where, a replay change nothing, others get 404?"""
    rep = Rep(session, world, "open@a.test", "UTC")
    tid = rep.task(utc(2026, 11, 24, 9, 0), StepType.EMAIL)
    freeze(utc(2026, 11, 24, 10, 0))
    r = client.post(f"/api/tasks/{tid}/opened", headers=rep.headers, json={"via": "gmail"})
    assert r.status_code == 200, r.json
    assert r.json["changed"] is True
    assert (r.json["task"]["opened_at"], r.json["task"]["opened_via"]) == (
        "2026-11-24T10:00:00Z", "gmail")
    freeze(utc(2026, 11, 24, 11, 0))
    r = client.post(f"/api/tasks/{tid}/opened", headers=rep.headers, json={"via": "outlook"})
    assert r.json["changed"] is False
    assert r.json["task"]["opened_via"] == "gmail"
    kinds = [e["kind"] for e in client.get("/api/feed", headers=rep.headers).json["items"]]
    assert kinds.count("task.opened") == 1
    r = client.post(f"/api/tasks/{tid}/opened", headers=rep.headers, json={"via": "fax"})
    assert r.status_code == 422
    r = client.post(f"/api/tasks/{tid}/opened", headers=world.auth(world.rep2),
                    json={"via": "web"})
    assert r.status_code == 404


def test_another_reps_or_orgs_task_is_404(client: FlaskClient, session: Session, world: World,
                                          freeze):
    """Can a colleague or another org see, complete or skip my task? (Admins: test_sharing.)"""
    rep = Rep(session, world, "mine@a.test", "UTC")
    tid = rep.task(utc(2026, 11, 24, 9, 0))
    freeze(utc(2026, 11, 24, 12, 0))
    assert client.get("/api/tasks", headers=world.auth(world.admin)).json["total"] == 0
    for user in (world.rep2, world.outsider):
        h = world.auth(user)
        assert client.get(f"/api/tasks/{tid}", headers=h).status_code == 404
        assert client.post(f"/api/tasks/{tid}/complete", headers=h).status_code == 404
        assert client.post(f"/api/tasks/{tid}/skip", headers=h).status_code == 404
        assert client.get("/api/tasks", headers=h).json["total"] == 0
    assert client.get("/api/tasks/999999", headers=rep.headers).status_code == 404
    r = client.get(f"/api/tasks/{tid}", headers=rep.headers)
    assert r.json["status"] == "open"


def test_task_api_needs_a_token(client: FlaskClient):
    """Is the task queue closed to callers without a valid bearer token?"""
    assert client.get("/api/tasks").status_code == 401
    r = client.get("/api/tasks", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
