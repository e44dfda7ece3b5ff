"""Resolving an email that needs attention, through the API and the Command Center's Failed tab.

In-process (the Flask test client) on SQLite and PostgreSQL. The email is brought to
``needs_attention`` by the dispatcher with a passed clock; the requests themselves use the
server's clock, so these tests only compare moments the server stamped or the test gave.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.models import EnrollmentStep, StepStatus
from server.sending.fake import FakeTransport, ManualClock
from server.sending.models import Resolution, ScheduledSend, SendStatus
from tests.conftest import World
from tests.sending.test_dispatcher import make_dispatcher, rows
from tests.sending.test_resolve import clock, fake, to_needs_attention, two_email_campaign

__all__ = ["clock", "fake"]  # fixtures shared with test_resolve

#: A rule code as docs/send-options.md numbers them (T4, E5…): never on a page.
RULE_CODE = re.compile(r"\b[CSTEXP]\d{1,2}\b")


def _failed_send(app: Flask, session: Session, world: World, now: datetime,
                 clock: ManualClock, fake: FakeTransport) -> int:
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    return send_id


def _steps(session: Session) -> list[StepStatus]:
    out = list(session.scalars(select(EnrollmentStep.status)
                               .order_by(EnrollmentStep.position)))
    session.commit()
    return out


def test_api_lists_what_waits_and_who_sees_it(
        app: Flask, client: FlaskClient, session: Session, world: World, now: datetime,
        clock: ManualClock, fake: FakeTransport):
    """Does GET /api/sends/failed list the email for its rep and the org's admin only?"""
    send_id = _failed_send(app, session, world, now, clock, fake)
    r = client.get("/api/sends/failed", headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    [item] = r.json["items"]
    assert r.json["total"] == 1
    assert (item["id"], item["status"], item["outcomes"]) == (
        send_id, "needs_attention", ["sent", "resend"])
    assert item["to_email"] == "ada@example.com" and item["owner_id"] == world.rep.id
    assert item["reason"] and item["due_at"] and item["contact_id"]
    admin = client.get("/api/sends/failed", headers=world.auth(world.admin)).json
    assert [i["id"] for i in admin["items"]] == [send_id]
    assert admin["items"][0]["owner_name"] == world.rep.name
    for other in (world.rep2, world.outsider):
        r = client.get("/api/sends/failed", headers=world.auth(other))
        assert r.status_code == 200 and r.json == {"items": [], "total": 0}
    only = client.get("/api/sends/failed?status=failed", headers=world.auth(world.rep)).json
    assert only["total"] == 0
    assert client.get("/api/sends/failed?status=sent",
                      headers=world.auth(world.rep)).status_code == 422


def test_api_it_was_sent_moves_the_campaign_on_T3_T5(
        app: Flask, client: FlaskClient, session: Session, world: World, now: datetime,
        clock: ManualClock, fake: FakeTransport):
    """Is "sent" refused to another rep and org (404), done by an admin, then 409 (T3, T5)?

    The given ``sent_at`` is the moment the second email copies: day 2 at 10:07 (T3).
    """
    send_id = _failed_send(app, session, world, now, clock, fake)
    url = f"/api/sends/{send_id}/resolve"
    body = {"outcome": "sent", "sent_at": "2026-11-24T10:07:00+00:00"}
    for other in (world.rep2, world.outsider):
        r = client.post(url, json=body, headers=world.auth(other))
        assert r.status_code == 404 and r.json["error"] == "not_found"
    assert client.post("/api/sends/999999/resolve", json=body,
                       headers=world.auth(world.rep)).status_code == 404
    for bad in ({"outcome": "maybe"}, {"outcome": "sent", "extra": 1}, {},
                {"outcome": "resend", "sent_at": "2026-11-24T10:07:00+00:00"},
                {"outcome": "sent", "sent_at": "2026-11-24T10:07:00"}):
        r = client.post(url, json=bad, headers=world.auth(world.rep))
        assert r.status_code == 422, (bad, r.json)
    assert rows(session)[0].status is SendStatus.NEEDS_ATTENTION

    r = client.post(url, json=body, headers=world.auth(world.admin))
    assert r.status_code == 200, r.json
    out = r.json
    assert out["resend"] is None
    assert out["send"]["status"] == "sent" and out["send"]["resolution"] == "sent"
    assert out["send"]["resolved_by_id"] == world.admin.id
    assert datetime.fromisoformat(out["send"]["sent_at"]) == datetime(2026, 11, 24, 10, 7,
                                                                     tzinfo=UTC)
    first, second = rows(session)
    assert first.resolution is Resolution.SENT
    assert second.due_at == datetime(2026, 11, 25, 10, 7, tzinfo=UTC)
    assert _steps(session) == [StepStatus.DONE, StepStatus.ACTIVE]

    again = client.post(url, json={"outcome": "resend"}, headers=world.auth(world.rep))
    assert again.status_code == 409 and "already marked as sent" in again.json["message"]
    empty = client.get("/api/sends/failed", headers=world.auth(world.rep)).json
    assert empty["total"] == 0


def test_api_send_it_again_is_sent_by_the_dispatcher_then_the_campaign_moves_on_T5_T6(
        app: Flask, client: FlaskClient, session: Session, world: World, now: datetime,
        clock: ManualClock, fake: FakeTransport):
    """Does "resend" schedule a new send that the dispatcher sends, moving the person on?"""
    send_id = _failed_send(app, session, world, now, clock, fake)
    r = client.post(f"/api/sends/{send_id}/resolve", json={"outcome": "resend"},
                    headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    new = r.json["resend"]
    assert r.json["send"]["status"] == "resent" and r.json["send"]["resolution"] == "resent"
    assert new["status"] == "scheduled" and new["resend_of_id"] == send_id
    assert _steps(session) == [StepStatus.ACTIVE, StepStatus.PENDING]
    # The dispatcher's clock passed to the moment the server made the new send due.
    due = datetime.fromisoformat(new["due_at"])
    assert make_dispatcher(app, fake, ManualClock(due)).run_once().sent == 1
    old, sent, follow = rows(session)
    assert sent.id == new["id"] and sent.status is SendStatus.SENT
    assert fake.deliveries() == {sent.id: 1}
    assert _steps(session) == [StepStatus.DONE, StepStatus.ACTIVE]
    assert follow.status is SendStatus.SCHEDULED and follow.resend_of_id is None
    r = client.post(f"/api/sends/{send_id}/resolve", json={"outcome": "resend"},
                    headers=world.auth(world.rep))
    assert r.status_code == 409 and "already sent again" in r.json["message"]


def test_openapi_describes_the_resolve_endpoints(client: FlaskClient):
    """Are both endpoints in /openapi.json with their body and response models?"""
    doc = client.get("/openapi.json").json
    post = doc["paths"]["/api/sends/{send_id}/resolve"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["properties"]["outcome"]["enum"] == ["sent", "resend"]
    assert body["required"] == ["outcome"]
    assert "ResolveOut" in post["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"]
    listing = doc["paths"]["/api/sends/failed"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"status", "limit"}


# -- the Failed tab -----------------------------------------------------------------------

def _csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def _sign_in(client: FlaskClient, email: str) -> None:
    r = client.post("/sign-in", data={"csrf": _csrf(client, "/sign-in"), "email": email,
                                      "password": "secret-pw"})
    assert r.status_code == 302


def _failed_table(page: str) -> str:
    match = re.search(r'<table aria-label="Failed emails">.*?</table>', page, re.S)
    assert match, "no Failed table"
    return match.group(0)


def test_failed_tab_explains_in_plain_words_and_resolves_it_was_sent(
        app: Flask, client: FlaskClient, session: Session, world: World, now: datetime,
        clock: ManualClock, fake: FakeTransport):
    """Does the Failed tab explain the email plainly, and "It was sent" resolve it?

    The explanation is in the rep's time zone with no rule codes; after the button a flash
    message says what happened and the rep stays on the Failed tab.
    """
    send_id = _failed_send(app, session, world, now, clock, fake)
    _sign_in(client, "rep@a.test")
    table = _failed_table(client.get("/?tab=failed").get_data(as_text=True))
    # Stopped at 11:00 UTC, which is 12:00 in Paris (the rep's zone), in the page's format.
    assert "We cannot tell whether the email to Ada Lovelace left" in table
    assert "we stopped trying on Tue 24 Nov 12:00" in table
    assert "“It was sent” and the campaign moves on" in table
    assert ">It was sent</button>" in table and ">Send it again</button>" in table
    assert not RULE_CODE.search(re.sub(r"<[^>]+>", " ", table))
    action = f"/sends/{send_id}/resolve"
    assert f'action="{action}"' in table

    assert client.post(action, data={"outcome": "sent"}).status_code == 400  # no CSRF
    token = _csrf(client, "/?tab=failed")
    r = client.post(action, data={"csrf": token, "outcome": "sent"})
    assert r.status_code == 302 and r.headers["Location"] == "/?tab=failed"
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Marked as sent: the email to ada@example.com is recorded as sent." in page
    assert "Nothing has failed." in page and 'aria-current="page">Failed' in page
    first = rows(session)[0]
    assert first.status is SendStatus.SENT and first.resolved_by_id == world.rep.id
    assert _steps(session) == [StepStatus.DONE, StepStatus.ACTIVE]

    r = client.post(action, data={"csrf": token, "outcome": "resend"}, follow_redirects=True)
    assert "Nothing was changed: this email was already marked as sent." in r.get_data(
        as_text=True)
    assert len(rows(session)) == 2


def test_failed_tab_another_rep_cannot_and_an_admin_sends_it_again(
        app: Flask, client: FlaskClient, session: Session, world: World, now: datetime,
        clock: ManualClock, fake: FakeTransport):
    """Is another rep refused, and can an admin see the rep's email and send it again?"""
    send_id = _failed_send(app, session, world, now, clock, fake)
    action = f"/sends/{send_id}/resolve"
    _sign_in(client, "rep2@a.test")
    assert "Ada Lovelace" not in client.get("/?tab=failed").get_data(as_text=True)
    r = client.post(action, data={"csrf": _csrf(client, "/?tab=failed"), "outcome": "resend"},
                    follow_redirects=True)
    assert "That email is not in your Failed list any more." in r.get_data(as_text=True)
    assert [s.status for s in rows(session)] == [SendStatus.NEEDS_ATTENTION]
    client.post("/sign-out", data={"csrf": _csrf(client, "/")})

    _sign_in(client, "admin@a.test")
    table = _failed_table(client.get("/?tab=failed").get_data(as_text=True))
    assert "(sent from Rep&#39;s mailbox)" in table or "(sent from Rep's mailbox)" in table
    assert "we stopped trying on Tue 24 Nov 11:00" in table  # the admin's zone is UTC
    r = client.post(action, data={"csrf": _csrf(client, "/?tab=failed"), "outcome": "resend"},
                    follow_redirects=True)
    page = r.get_data(as_text=True)
    assert "Sending it again: the email to ada@example.com is queued to be sent now." in page
    old, new = rows(session)
    assert old.status is SendStatus.RESENT and old.resolved_by_id == world.admin.id
    assert new.status is SendStatus.SCHEDULED and new.resend_of_id == old.id
    assert session.scalar(select(ScheduledSend.id).where(
        ScheduledSend.status == SendStatus.NEEDS_ATTENTION)) is None
    session.commit()
