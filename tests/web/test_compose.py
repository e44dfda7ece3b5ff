"""The compose window: filled from the prefill document; every action checked server-side."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.db import utcnow
from server.feed.models import EventKind, FeedEvent
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import CompletedVia, Task, TaskStatus
from tests.conftest import World, email_step, make_campaign, make_contact, task_step

PARIS = ZoneInfo("Europe/Paris")
BODY = "<p>Hi {{first_name}},</p><p>{{! Introduce yourself}}</p><p>Best, {{my_name}}</p>"


def email_task(session: Session, user: User, *, body: str = BODY,
               subject: str = "Hello {{first_name}}", email: str = "grace@example.com",
               **contact: str) -> Task:
    """An open email task of ``user`` due now, made by launching a one-step campaign."""
    tpl = Template(org_id=user.org_id, created_by_id=user.id, name="Intro", subject=subject,
                   body_html=body)
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, user, [email_step(1, SendOption.TASK, tpl)],
                             name="Spring outreach")
    person = make_contact(session, user, email, first_name=contact.pop("first_name", "Grace"),
                          company="Initech", **contact)
    launch(session, user, campaign, [person.id], now=utcnow())
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == person.id))
    assert task is not None
    return task


def sign_in(client: FlaskClient, email: str = "rep@a.test") -> None:
    page = client.get("/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    r = client.post("/sign-in", data={"csrf": token, "email": email, "password": "secret-pw"})
    assert r.status_code == 302


def csrf(client: FlaskClient, task_id: int) -> str:
    page = client.get(f"/tasks/{task_id}/compose").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def post(client: FlaskClient, task: Task, action: str, **form: str):
    data = {"csrf": csrf(client, task.id), "action": action, "subject": "Hello Grace",
            "html": "<p>Hi Grace, we met in Lisbon.</p>", **form}
    return client.post(f"/tasks/{task.id}/compose", data=data)


def sends(session: Session) -> list[ScheduledSend]:
    session.rollback()
    return list(session.scalars(select(ScheduledSend).order_by(ScheduledSend.id)))


def test_compose_window_is_filled(client: FlaskClient, session: Session, world: World):
    """Does the compose window show To, Subject, the rendered body, the prompt and the links?"""
    task = email_task(session, world.rep, last_name="Hopper")
    sign_in(client)
    r = client.get(f"/tasks/{task.id}/compose")
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert "Grace Hopper &lt;grace@example.com&gt;" in text
    assert 'name="subject" type="text" value="Hello Grace"' in text
    assert "Hi Grace," in text and "Best, Rep" in text
    assert "{{! Introduce yourself}}" in text and "Introduce yourself</li>" in text
    # Sending is disabled while the prompt remains (the server refuses it too, below).
    assert re.search(r'value="send" data-needs-clean disabled', text)
    assert 'id="open-gmail" href="https://mail.google.com/mail/?view=cm' in text
    assert 'id="open-outlook" href="https://outlook.office.com/mail/deeplink/compose' in text
    assert "mailbox is not connected" in text and 'name="csrf"' in text


def test_send_is_refused_while_a_prompt_remains(client: FlaskClient, session: Session,
                                               world: World):
    """Is Send now with a field prompt left a 422 shown on the page, storing nothing (E6)?"""
    task = email_task(session, world.rep)
    sign_in(client)
    r = post(client, task, "send", html="<p>{{! Introduce yourself}}</p>")
    assert r.status_code == 422
    text = r.get_data(as_text=True)
    assert 'role="alert"' in text and "field prompt" in text
    assert "{{! Introduce yourself}}" in text  # the rep's edits are kept
    assert sends(session) == []


def test_send_now_puts_the_edited_email_in_the_outbox(client: FlaskClient, session: Session,
                                                      world: World):
    """Does Send now queue the edited email due now and go to the Scheduled tab?"""
    task = email_task(session, world.rep)
    sign_in(client)
    before = utcnow()
    r = post(client, task, "send", subject="Lisbon", html="<p>Hi, <b>we met</b>.</p>")
    assert r.status_code == 302 and r.headers["Location"] == "/?tab=scheduled"
    [send] = sends(session)
    assert (send.task_id, send.subject, send.status) == (task.id, "Lisbon", SendStatus.SCHEDULED)
    assert send.html == "<p>Hi, <b>we met</b>.</p>" and before <= send.due_at <= utcnow()
    page = client.get("/?tab=scheduled").get_data(as_text=True)
    assert "queued to send now" in page and "Lisbon" in page


def test_schedule_is_read_in_the_reps_time_zone(client: FlaskClient, session: Session,
                                                world: World):
    """Is the date and time entered read in the rep's zone (Europe/Paris), replacing on resend?"""
    task = email_task(session, world.rep)
    sign_in(client)
    day = (utcnow().astimezone(PARIS) + timedelta(days=2)).date()
    r = post(client, task, "schedule", send_date=day.isoformat(), send_time="09:30")
    assert r.status_code == 302
    [send] = sends(session)
    assert send.due_at == datetime(day.year, day.month, day.day, 9, 30, tzinfo=PARIS)
    summary = session.scalars(select(FeedEvent.summary).where(
        FeedEvent.kind == EventKind.SEND_SCHEDULED)).one()
    assert f"{send.due_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in summary
    # The page now opens with the rep's edits and the scheduled moment, and rescheduling
    # replaces the same row.
    text = client.get(f"/tasks/{task.id}/compose").get_data(as_text=True)
    assert "we met in Lisbon" in text and 'value="09:30"' in text and "Unschedule" in text
    assert post(client, task, "schedule", send_date=day.isoformat(), send_time="11:00",
                subject="Later").status_code == 302
    [send] = sends(session)
    assert (send.subject, send.due_at.astimezone(PARIS).hour) == ("Later", 11)


def test_bad_schedule_input_is_shown_inline(client: FlaskClient, session: Session,
                                            world: World):
    """Are a past moment, an unreadable date and a CR/LF subject 422s shown with role=alert?"""
    task = email_task(session, world.rep)
    sign_in(client)
    yesterday = (utcnow().astimezone(PARIS) - timedelta(days=1)).date().isoformat()
    for form, message in (({"send_date": yesterday, "send_time": "09:00"}, "in the past"),
                          ({"send_date": "soon", "send_time": "09:00"}, "YYYY-MM-DD"),
                          ({"subject": "Hi\r\nBcc: everyone@example.com"}, "line break")):
        r = post(client, task, "schedule", **{"send_date": "2099-01-01", "send_time": "09:00",
                                               **form})
        assert r.status_code == 422, form
        text = r.get_data(as_text=True)
        assert 'role="alert"' in text and message in text, form
    assert sends(session) == []


def test_form_without_csrf_token_is_refused(client: FlaskClient, session: Session,
                                            world: World):
    """Is a compose post without the page's CSRF token a 400 that changes nothing?"""
    task = email_task(session, world.rep)
    sign_in(client)
    r = client.post(f"/tasks/{task.id}/compose", data={"action": "skip"})
    assert r.status_code == 400
    session.rollback()
    assert session.get(Task, task.id).status is TaskStatus.OPEN


def test_mark_as_sent_completes_the_task_and_withdraws_its_send(
        client: FlaskClient, session: Session, world: World):
    """Does Mark as sent complete the task via web and cancel a send still in the outbox?"""
    task = email_task(session, world.rep)
    sign_in(client)
    assert post(client, task, "schedule", send_date="2099-01-01", send_time="09:00"
                ).status_code == 302
    r = post(client, task, "mark_sent")
    assert r.status_code == 302 and r.headers["Location"] == "/?tab=tasks"
    [send] = sends(session)
    assert send.status is SendStatus.CANCELLED
    done = session.get(Task, task.id)
    assert (done.status, done.via) == (TaskStatus.DONE, CompletedVia.WEB)
    assert done.sent_at is not None
    text = client.get(f"/tasks/{task.id}/compose").get_data(as_text=True)
    assert "This task is done" in text


def test_skip(client: FlaskClient, session: Session, world: World):
    """Does Skip skip the task?"""
    task = email_task(session, world.rep)
    sign_in(client)
    assert post(client, task, "skip").status_code == 302
    session.rollback()
    assert session.get(Task, task.id).status is TaskStatus.SKIPPED


def test_blocked_task_shows_missing_fields_and_cannot_be_sent(
        client: FlaskClient, session: Session, world: World):
    """Does a task whose template needs a missing field show it and refuse to send (E5)?"""
    task = email_task(session, world.rep, body="<p>Your phone: {{custom_field_phone}}</p>")
    sign_in(client)
    text = client.get(f"/tasks/{task.id}/compose").get_data(as_text=True)
    assert 'id="blocked"' in text and "custom_field_phone" in text
    assert 'id="open-gmail"' not in text and "until the missing fields are filled in" in text
    assert re.search(r'value="send" data-needs-clean disabled', text)
    r = post(client, task, "send")
    assert r.status_code == 422 and "missing" in r.get_data(as_text=True)
    assert sends(session) == []


def test_long_email_has_no_deep_links(client: FlaskClient, session: Session, world: World):
    """When the deep links would be too long, are they hidden with a note about the add-ins?"""
    task = email_task(session, world.rep, body="<p>" + "word " * 800 + "</p>")
    sign_in(client)
    text = client.get(f"/tasks/{task.id}/compose").get_data(as_text=True)
    assert 'id="open-gmail"' not in text and 'id="open-outlook"' not in text
    assert "too long to open in Gmail or Outlook" in text


@pytest.mark.parametrize("who", ["rep2@a.test", "rep@b.test"])
def test_another_reps_task_is_404(client: FlaskClient, session: Session, world: World,
                                  who: str):
    """Is another rep's (or org's) task a 404, for the page and for posting to it?"""
    task = email_task(session, world.rep)
    sign_in(client, who)
    assert client.get(f"/tasks/{task.id}/compose").status_code == 404
    assert client.post(f"/tasks/{task.id}/compose", data={"action": "skip"}).status_code == 404


def test_non_email_task_and_signed_out(client: FlaskClient, session: Session, world: World):
    """Is a call task's compose window a 404, and a visitor sent to sign in?"""
    campaign = make_campaign(session, world.rep, [task_step(1)], name="Calls")
    person = make_contact(session, world.rep, "call@example.com")
    launch(session, world.rep, campaign, [person.id], now=utcnow())
    session.commit()
    call = session.scalar(select(Task.id).where(Task.contact_id == person.id))
    r = client.get(f"/tasks/{call}/compose")
    assert r.status_code == 302 and r.headers["Location"] == "/sign-in"
    sign_in(client)
    assert client.get(f"/tasks/{call}/compose").status_code == 404
    assert session.scalar(select(func.count()).select_from(ScheduledSend)) == 0
