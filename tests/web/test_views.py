"""Web pages: the sign-in redirect, signing in and out with a CSRF-protected form."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.conftest import World, make_contact, make_user


def _csrf(client: FlaskClient, path: str = "/sign-in") -> str:
    """The CSRF token of the form on ``path``."""
    r = client.get(path)
    assert r.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', r.get_data(as_text=True))
    assert match, "the page has no CSRF field"
    return match.group(1)


def _sign_in(client: FlaskClient, email: str, password: str):
    return client.post("/sign-in", data={"csrf": _csrf(client), "email": email,
                                         "password": password})


def test_home_redirects_to_sign_in(client: FlaskClient):
    """Does a visitor who is not signed in get sent from / to /sign-in?"""
    r = client.get("/")
    assert r.status_code == 302
    assert r.headers["Location"] == "/sign-in"
    page = client.get("/sign-in").get_data(as_text=True)
    assert 'type="password"' in page and 'name="csrf"' in page


def test_sign_in_with_the_right_password(client: FlaskClient, world: World):
    """Does the right email and password sign the rep in and show their start page?"""
    r = _sign_in(client, "REP@a.test", "secret-pw")
    assert r.status_code == 302 and r.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Your tasks" in text and "Rep · Org A" in text
    assert "Times are in Europe/Paris" in text


def test_sign_in_with_a_wrong_password(client: FlaskClient, world: World):
    """Is a wrong password a 401 that says so, keeps the email, and leaves the visitor out?"""
    r = _sign_in(client, "rep@a.test", "not-the-password")
    assert r.status_code == 401
    text = r.get_data(as_text=True)
    assert "That email and password do not match an account." in text
    assert 'value="rep@a.test"' in text
    assert client.get("/").status_code == 302


def test_sign_in_with_an_unknown_email_looks_the_same(client: FlaskClient, world: World):
    """Is an unknown email answered exactly like a wrong password (no account probing)?"""
    r = _sign_in(client, "nobody@a.test", "secret-pw")
    assert r.status_code == 401
    assert "That email and password do not match an account." in r.get_data(as_text=True)


def test_sign_in_without_csrf_token_is_refused(client: FlaskClient, world: World):
    """Is a sign-in form posted without the page's CSRF token refused, signing nobody in?"""
    client.get("/sign-in")
    r = client.post("/sign-in", data={"email": "rep@a.test", "password": "secret-pw"})
    assert r.status_code == 400
    r = client.post("/sign-in", data={"csrf": "forged", "email": "rep@a.test",
                                      "password": "secret-pw"})
    assert r.status_code == 400
    assert client.get("/").status_code == 302


def test_sign_out(client: FlaskClient, world: World):
    """Does signing out (with the CSRF token) end the session, and without it change nothing?"""
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    assert client.post("/sign-out", data={"csrf": "wrong"}).status_code == 400
    assert client.get("/").status_code == 200
    r = client.post("/sign-out", data={"csrf": _csrf(client, "/")})
    assert r.status_code == 302 and r.headers["Location"] == "/sign-in"
    assert client.get("/").status_code == 302


def test_start_page_lists_todays_tasks(client: FlaskClient, session: Session, world: World):
    """After a launch, does the signed-in rep's start page list the new call task?"""
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    session.commit()
    h = world.auth(world.rep)
    cid = client.post("/api/campaigns", headers=h, json={
        "name": "Calls", "steps": [{"day": 1, "type": "call", "title": "Call Grace"}]}).json["id"]
    assert client.post(f"/api/campaigns/{cid}/launch", headers=h,
                       json={"contact_ids": [contact.id]}).status_code == 201
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    text = client.get("/").get_data(as_text=True)
    assert "Call Grace" in text and "grace@example.com" in text and "Calls · day 1" in text


def test_user_without_password_cannot_sign_in(client: FlaskClient, session: Session,
                                              world: World):
    """Can a user created without a password (API-only) not sign in with an empty one?"""
    make_user(session, world.org, "nopw@a.test", password=None)
    session.commit()
    assert _sign_in(client, "nopw@a.test", "").status_code == 401


# -- the web session on the JSON API (the Live Feed's EventSource) ----------------------------


def _email_task(session: Session, world: World, now, *, email: str = "grace@example.com"):
    """An open email task of the signed-in rep, due at ``now``."""
    from server.campaigns.launch import launch
    from server.campaigns.spec import SendOption
    from server.tasks.models import Task
    from tests.conftest import email_step, make_campaign, make_template

    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)],
                             name="Emails")
    contact = make_contact(session, world.rep, email, first_name="Grace")
    launch(session, world.rep, campaign, [contact.id], now=now)
    session.commit()
    return session.query(Task).filter_by(contact_id=contact.id).one()


def test_signed_in_browser_may_read_the_api_and_the_feed_stream(client: FlaskClient,
                                                                world: World):
    """Can a signed-in browser GET the API and the SSE stream with its cookie alone?"""
    assert client.get("/api/tasks").status_code == 401
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    assert client.get("/api/tasks").status_code == 200
    r = client.get("/api/feed/stream")
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert b"connected" in r.get_data()


def test_cookie_alone_cannot_change_state(client: FlaskClient, session: Session, world: World):
    """Is a cross-site style POST (cookie, no X-CSRF-Token) refused, and the header accepted?"""
    from server.db import utcnow

    task = _email_task(session, world, utcnow())
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    url = f"/api/tasks/{task.id}/skip"
    r = client.post(url, json={})
    assert r.status_code == 403 and r.json["error"] == "csrf_failed"
    assert client.post(url, json={}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    r = client.post(f"/api/tasks/{task.id}/schedule", json={"subject": "Hi", "html": "<p>x</p>"})
    assert r.status_code == 403
    token = _csrf(client, "/")
    r = client.post(url, json={}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json["task"]["status"] == "skipped"


def test_bearer_token_still_needs_no_csrf_header(client: FlaskClient, world: World):
    """Does an API token keep working for unsafe methods without any CSRF header?"""
    r = client.post("/api/templates", headers=world.auth(world.rep), json={"name": "T"})
    assert r.status_code == 201


def test_no_credentials_is_401_not_403(client: FlaskClient, world: World):
    """Without a session or a token, is an unsafe API call a 401 (not a CSRF 403)?"""
    assert client.post("/api/templates", json={"name": "T"}).status_code == 401


# -- the Command Center -----------------------------------------------------------------------


def test_command_center_tabs(client: FlaskClient, session: Session, world: World):
    """Do the Tasks, Scheduled and Failed tabs list the right rows in the rep's time zone?"""
    from datetime import timedelta

    from server.db import utcnow
    from server.sending import schedule as outbox
    from server.sending.models import ScheduledSend, SendStatus

    now = utcnow()
    task = _email_task(session, world, now)
    later = _email_task(session, world, now + timedelta(days=3), email="later@example.com")
    send_at = (now + timedelta(days=1)).replace(hour=8, minute=30, second=0, microsecond=0)
    outbox.schedule_task_email(session, world.rep, task.id, subject="Hello Grace",
                               html="<p>Hi</p>", send_at=send_at, now=now)
    session.add(ScheduledSend(org_id=world.org.id, owner_id=world.rep.id,
                              contact_id=later.contact_id, to_email="later@example.com",
                              subject="Broken one", status=SendStatus.FAILED, due_at=now,
                              reason="failed: missing field phone"))
    session.commit()
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302

    text = client.get("/").get_data(as_text=True)
    assert "Command Center" in text and f'/tasks/{task.id}/compose' in text
    assert "Overdue" in text and "Tomorrow" in text and "Next 7 days" in text
    assert 'aria-current="page">Tasks' in text
    assert "Scheduled · " in text  # the badge on the task whose email waits in the outbox
    assert f'/tasks/{later.id}/compose' in text

    text = client.get("/?tab=scheduled").get_data(as_text=True)
    local = send_at.astimezone(ZoneInfo("Europe/Paris")).strftime("%a %d %b %H:%M")
    assert "Hello Grace" in text and local in text and "grace@example.com" in text
    assert "mailbox is not connected" in text
    assert "Broken one" not in text

    text = client.get("/?tab=failed").get_data(as_text=True)
    assert "Broken one" in text and "was not sent (it stopped on" in text
    assert ": missing field phone." in text and "Send it again" in text
    assert "Hello Grace" not in text

    text = client.get("/?tab=tasks&type=call").get_data(as_text=True)
    assert f'/tasks/{task.id}/compose' not in text
    assert client.get("/?tab=nonsense").status_code == 200


def test_command_center_live_feed_panel(client: FlaskClient, session: Session, world: World):
    """Does the Live Feed panel show recent events and point its EventSource at the stream?"""
    from server.db import utcnow

    _email_task(session, world, utcnow())
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    text = client.get("/").get_data(as_text=True)
    assert "Live Feed" in text and "New task: " in text
    match = re.search(r'data-src="([^"]+)"', text)
    assert match and match.group(1).startswith("/api/feed/stream?after=")
    assert "feed.js" in text
    for asset in ("feed.js", "compose.js", "web.css"):
        with client.get(f"/web-static/{asset}") as r:
            assert r.status_code == 200


def test_session_cookie_is_lax_and_http_only(client, world):
    """Is the sign-in cookie HttpOnly and SameSite=Lax, so other sites cannot ride on it?"""
    page = client.get("/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    r = client.post("/sign-in", data={"email": "rep@a.test", "password": "secret-pw",
                                      "csrf": token})
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
