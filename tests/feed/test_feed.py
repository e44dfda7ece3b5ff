"""The Live Feed: an event for everything that happens, read by cursor or as Server-Sent Events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.progress import send_finished
from server.db import session_scope
from server.feed.models import EventKind
from server.feed.service import record
from server.sending.models import ScheduledSend, SendStatus
from tests.conftest import World, make_contact, make_template


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch, now: datetime) -> Callable[[datetime], None]:
    """The campaign and task views read this clock; it starts at ``now``."""
    def set_now(moment: datetime) -> None:
        for module in ("server.campaigns.views", "server.tasks.views"):
            monkeypatch.setattr(f"{module}.utcnow", lambda: moment)
    set_now(now)
    return set_now


def feed(client: FlaskClient, headers: dict, after: int = 0, limit: int = 500) -> list[dict]:
    r = client.get(f"/api/feed?after={after}&limit={limit}", headers=headers)
    assert r.status_code == 200, r.json
    return r.json["items"]


def call_campaign(client: FlaskClient, headers: dict) -> int:
    r = client.post("/api/campaigns", headers=headers, json={
        "name": "Calls", "timezone": "UTC", "steps": [{"day": 1, "type": "call"}]})
    assert r.status_code == 201, r.json
    return r.json["id"]


def test_every_step_of_a_persons_journey_is_in_the_feed(
        client: FlaskClient, session: Session, world: World, freeze):
    """Is each add, send scheduled/sent, task created/completed/skipped and removal recorded?"""
    tpl = make_template(session, world.rep)
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada",
                       last_name="Lovelace")
    bob = make_contact(session, world.rep, "bob@example.com", first_name="Bob", last_name="")
    session.commit()
    h = world.auth(world.rep)
    r = client.post("/api/campaigns", headers=h, json={
        "name": "Intro", "timezone": "UTC", "steps": [
            {"day": 1, "type": "email", "send_option": "choose_at_launch",
             "template_id": tpl.id},
            {"day": 2, "type": "call"}, {"day": 3, "type": "inmail"}]})
    cid = r.json["id"]
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={
        "contact_ids": [ada.id], "send_at": "2026-11-24T13:00:00Z"})
    eid = r.json["enrolled"][0]["enrollment_id"]
    send = session.scalar(select(ScheduledSend))
    send.status, send.sent_at = SendStatus.SENT, utc(2026, 11, 24, 13, 0)  # the dispatcher
    send_finished(session, send.id, utc(2026, 11, 24, 13, 0))
    session.commit()
    call = client.get("/api/tasks", headers=h).json["items"][0]
    client.post(f"/api/tasks/{call['id']}/complete", headers=h)
    inmail = client.get("/api/tasks", headers=h).json["items"][0]
    client.post(f"/api/tasks/{inmail['id']}/skip", headers=h)
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={
        "contact_ids": [bob.id], "send_at": "2026-11-24T13:00:00Z"})
    bob_eid = r.json["enrolled"][0]["enrollment_id"]
    client.post(f"/api/enrollments/{bob_eid}/remove", headers=h, json={"reason": "wrong person"})

    events = feed(client, h)
    assert [e["kind"] for e in events] == [
        "person.added", "send.scheduled", "send.sent", "task.created", "task.completed",
        "task.created", "task.skipped", "person.added", "send.scheduled", "person.removed"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {e["owner_id"] for e in events} == {world.rep.id}
    added, scheduled, sent, created, completed, created2, skipped = events[:7]
    assert added["summary"] == "Ada Lovelace added to Intro"
    assert (added["data"]["enrollment_id"], added["data"]["contact_id"]) == (eid, ada.id)
    assert scheduled["data"]["send_id"] == send.id
    assert scheduled["data"]["due_at"] == "2026-11-24T13:00:00+00:00"
    assert sent["data"]["send_id"] == send.id
    assert created["data"]["task_id"] == call["id"] and created["data"]["type"] == "call"
    assert completed["data"]["task_id"] == call["id"] and completed["data"]["via"] == "web"
    assert created2["data"]["task_id"] == inmail["id"]
    assert skipped["data"]["task_id"] == inmail["id"]
    removed = events[-1]
    assert removed["data"]["reason"] == "wrong person"
    assert removed["data"]["enrollment_id"] == bob_eid
    assert removed["summary"] == "Bob left Intro: wrong person"


def test_feed_pages_by_cursor_without_gaps_or_repeats(
        client: FlaskClient, session: Session, world: World, freeze):
    """Does following ``cursor`` with after= walk every event exactly once, then stop?"""
    people = [make_contact(session, world.rep, f"p{i}@example.com") for i in range(7)]
    session.commit()
    h = world.auth(world.rep)
    cid = call_campaign(client, h)
    client.post(f"/api/campaigns/{cid}/launch", headers=h,
                json={"contact_ids": [p.id for p in people]})
    everything = feed(client, h)
    assert len(everything) == 14  # person.added and task.created for each of the 7

    seen, after = [], 0
    for _ in range(10):
        r = client.get(f"/api/feed?after={after}&limit=3", headers=h)
        page = r.json
        assert len(page["items"]) <= 3
        if not page["items"]:
            assert page["cursor"] == after
            break
        seen += page["items"]
        after = page["cursor"]
        assert after == page["items"][-1]["id"]
    assert seen == everything


@pytest.mark.parametrize(("query", "field"), [
    ("after=-1", "after"), ("after=x", "after"), ("limit=0", "limit"), ("limit=501", "limit"),
    ("since=3", "since")])
def test_bad_feed_query_is_422_naming_the_field(client: FlaskClient, world: World, query: str,
                                                field: str):
    """Is a bad cursor or limit answered 422 naming it?"""
    r = client.get(f"/api/feed?{query}", headers=world.auth(world.rep))
    assert r.status_code == 422
    assert [e["field"] for e in r.json["errors"]] == [field]


def test_reps_see_their_own_events_and_admins_their_orgs(
        client: FlaskClient, session: Session, world: World, freeze):
    """Does a rep see only their own events, and an admin all of the org's but no other org's?"""
    mine = make_contact(session, world.rep, "mine@example.com")
    theirs = make_contact(session, world.rep2, "theirs@example.com")
    far = make_contact(session, world.outsider, "far@example.com")
    session.commit()
    for user, contact in ((world.rep, mine), (world.rep2, theirs), (world.outsider, far)):
        h = world.auth(user)
        cid = call_campaign(client, h)
        r = client.post(f"/api/campaigns/{cid}/launch", headers=h,
                        json={"contact_ids": [contact.id]})
        assert r.status_code == 201

    def owners(user) -> list[int]:
        return [e["owner_id"] for e in feed(client, world.auth(user))]

    assert owners(world.rep) == [world.rep.id] * 2
    assert owners(world.rep2) == [world.rep2.id] * 2
    assert owners(world.outsider) == [world.outsider.id] * 2
    assert owners(world.admin) == [world.rep.id] * 2 + [world.rep2.id] * 2
    assert client.get("/api/feed").status_code == 401


def _sse(body: str) -> list[dict]:
    """Parse a text/event-stream body into its events (comments and retry lines dropped)."""
    events = []
    for block in body.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"],
                           "data": json.loads(fields["data"])})
    return events


def test_stream_sends_id_event_and_data_lines_and_resumes_from_last_event_id(
        client: FlaskClient, session: Session, world: World, freeze):
    """Are events sent as id/event/data lines, and does Last-Event-ID resume without loss?"""
    people = [make_contact(session, world.rep, f"s{i}@example.com") for i in range(3)]
    session.commit()
    h = world.auth(world.rep)
    cid = call_campaign(client, h)
    client.post(f"/api/campaigns/{cid}/launch", headers=h,
                json={"contact_ids": [p.id for p in people]})
    everything = feed(client, h)

    r = client.get("/api/feed/stream?after=0", headers=h)
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    body = r.get_data(as_text=True)
    assert body.startswith("retry: ")
    first = everything[0]
    assert (f"id: {first['id']}\nevent: person.added\ndata: {{\"id\":{first['id']},"
            in body)
    streamed = _sse(body)
    assert [(e["id"], e["event"]) for e in streamed] == [(e["id"], e["kind"])
                                                         for e in everything]
    assert [e["data"]["summary"] for e in streamed] == [e["summary"] for e in everything]

    last_seen = streamed[2]["id"]
    r = client.get("/api/feed/stream", headers={**h, "Last-Event-ID": str(last_seen)})
    assert [e["id"] for e in _sse(r.get_data(as_text=True))] == [
        e["id"] for e in everything[3:]]
    # Last-Event-ID wins over ?after= (a browser reconnecting keeps the page's URL).
    r = client.get("/api/feed/stream?after=0", headers={**h, "Last-Event-ID": str(last_seen)})
    assert len(_sse(r.get_data(as_text=True))) == len(everything) - 3


def test_stream_delivers_events_recorded_while_it_is_open(
        app: Flask, client: FlaskClient, world: World, freeze):
    """Does an open stream deliver an event recorded while it is open, only to whom may see it?"""
    def later() -> None:
        time.sleep(0.3)
        with session_scope(app) as s:
            record(s, org_id=world.org.id, owner_id=world.rep.id, kind=EventKind.TASK_CREATED,
                   summary="New task: live", data={"n": 1})

    with session_scope(app) as s:
        record(s, org_id=world.org.id, owner_id=world.rep.id, kind=EventKind.TASK_CREATED,
               summary="old news")
    writer = threading.Thread(target=later)
    writer.start()
    try:
        body = client.get("/api/feed/stream", headers=world.auth(world.rep)).get_data(
            as_text=True)
    finally:
        writer.join()
    events = _sse(body)
    assert [(e["event"], e["data"]["summary"]) for e in events] == [
        ("task.created", "New task: live")]
    other = client.get("/api/feed/stream?after=0", headers=world.auth(world.rep2))
    assert _sse(other.get_data(as_text=True)) == []
    admin = client.get("/api/feed/stream?after=0", headers=world.auth(world.admin))
    assert [e["data"]["summary"] for e in _sse(admin.get_data(as_text=True))] == [
        "old news", "New task: live"]
