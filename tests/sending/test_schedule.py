"""Putting an email task's edited email into the outbox: the service and its API endpoint."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from server.compose.render import sanitise_html
from server.contacts.models import Contact
from server.errors import Conflict, Invalid
from server.feed.models import EventKind, FeedEvent
from server.sending import schedule as outbox
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus
from server.tasks.service import skip_task
from tests.conftest import World, email_step, make_campaign, make_contact, task_step


def make_task(session: Session, user: User, now: datetime, kind: StepType = StepType.EMAIL,
              email: str = "grace@example.com") -> Task:
    """An open task of ``kind`` for ``user``, due at ``now`` (a one-step campaign launched)."""
    n = session.scalar(select(func.count()).select_from(Task)) or 0
    if n:
        email = email.replace("@", f"+{n}@")
    tpl = Template(org_id=user.org_id, created_by_id=user.id, name="Intro",
                   subject="Hello {{first_name}}", body_html="<p>{{! Introduce yourself}}</p>")
    session.add(tpl)
    session.flush()
    step = email_step(1, SendOption.TASK, tpl) if kind is StepType.EMAIL else task_step(1, kind)
    campaign = make_campaign(session, user, [step], name=f"C{kind.value}")
    contact = make_contact(session, user, email, first_name="Grace", company="Initech")
    launch(session, user, campaign, [contact.id], now=now)
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    return task


def schedule(session: Session, user: User, task: Task, now: datetime, **overrides):
    args = dict(subject="Hello Grace", html="<p>We met at the fair.</p>", send_at=now, now=now)
    args.update(overrides)
    return outbox.schedule_task_email(session, user, task.id, **args)


def fields(exc: pytest.ExceptionInfo[Invalid]) -> dict[str, str]:
    return {e.field: e.message for e in exc.value.errors}


def test_schedule_stores_a_row_for_the_task_and_a_feed_event(session: Session, world: World,
                                                             now: datetime):
    """Does scheduling store one outbox row carrying the task, the edits and the due moment?"""
    task = make_task(session, world.rep, now)
    later = now + timedelta(hours=3)
    send = schedule(session, world.rep, task, now, send_at=later,
                    html='<p onclick="x()">Hi <a href="javascript:alert(1)">you</a>'
                         '<script>bad()</script></p>')
    session.commit()
    assert (send.task_id, send.enrollment_id, send.enrollment_step_id, send.contact_id) == (
        task.id, task.enrollment_id, None, task.contact_id)
    assert (send.to_email, send.subject, send.status, send.due_at) == (
        "grace@example.com", "Hello Grace", SendStatus.SCHEDULED, later)
    assert "onclick" not in send.html and "javascript" not in send.html
    assert "script" not in send.html and "bad()" not in send.html
    assert send.text == "Hi you"
    event = session.scalars(select(FeedEvent).where(FeedEvent.kind == EventKind.SEND_SCHEDULED)
                            .order_by(FeedEvent.id.desc())).first()
    assert event is not None and event.data["task_id"] == task.id
    assert event.data["send_id"] == send.id
    # The task stays open until the email has really left.
    assert session.get(Task, task.id).status is TaskStatus.OPEN


def test_a_remaining_prompt_is_refused(session: Session, world: World, now: datetime):
    """Is an email with a field prompt {{! …}} left in its body or subject refused (E6)?"""
    task = make_task(session, world.rep, now)
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, task, now, html="<p>{{! Introduce yourself}}</p>")
    assert "prompt" in fields(exc)["html"] and exc.value.errors[0].rule == "E6"
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, task, now, subject="Hi {{!name}}")
    assert "prompt" in fields(exc)["subject"]
    with pytest.raises(Invalid) as exc:  # half-deleted, or hidden in the text part
        schedule(session, world.rep, task, now, text="Hello {{ ! there")
    assert "text" in fields(exc)
    assert session.scalar(select(func.count()).select_from(ScheduledSend)) == 0


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: all@example.com", "Hi\nthere", "Hi\rx"])
def test_cr_or_lf_in_the_subject_is_refused(session: Session, world: World, now: datetime,
                                           subject: str):
    """Is a subject with a CR or LF (header injection) refused, naming the field?"""
    task = make_task(session, world.rep, now)
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, task, now, subject=subject)
    assert "line break" in fields(exc)["subject"]


def test_a_moment_in_the_past_is_refused(session: Session, world: World, now: datetime):
    """Is a send_at in the past refused, while the current minute still counts as now?"""
    task = make_task(session, world.rep, now)
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, task, now, send_at=now - timedelta(hours=1))
    assert "past" in fields(exc)["send_at"]
    send = schedule(session, world.rep, task, now, send_at=now - timedelta(seconds=30))
    assert send.due_at == now


def test_scheduling_again_replaces_the_unclaimed_send(session: Session, world: World,
                                                      now: datetime):
    """Is scheduling a task twice idempotent: one row, with the second edits and moment?"""
    task = make_task(session, world.rep, now)
    first = schedule(session, world.rep, task, now, send_at=now + timedelta(days=1))
    session.commit()
    second = schedule(session, world.rep, task, now, subject="Take two",
                      send_at=now + timedelta(days=2))
    session.commit()
    assert second.id == first.id
    rows = session.scalars(select(ScheduledSend).where(ScheduledSend.task_id == task.id)).all()
    assert len(rows) == 1
    assert (rows[0].subject, rows[0].due_at) == ("Take two", now + timedelta(days=2))


def test_a_send_being_sent_cannot_be_replaced(session: Session, world: World, now: datetime):
    """Once the sender has claimed the send, is rescheduling a 409 that adds no second row?"""
    task = make_task(session, world.rep, now)
    send = schedule(session, world.rep, task, now)
    send.status = SendStatus.CLAIMED
    session.commit()
    with pytest.raises(Conflict):
        schedule(session, world.rep, task, now)
    with pytest.raises(Conflict):
        outbox.cancel_task_send(session, world.rep, task.id, reason="x", now=now)


def test_another_reps_task_is_not_found(session: Session, world: World, now: datetime):
    """Is another rep's (or org's) task not found, with nothing stored?"""
    task = make_task(session, world.rep, now)
    for other in (world.rep2, world.outsider, world.admin):
        with pytest.raises(outbox.TaskNotFound):
            schedule(session, other, task, now)
    assert session.scalar(select(func.count()).select_from(ScheduledSend)) == 0


def test_only_open_email_tasks_can_be_scheduled(session: Session, world: World, now: datetime):
    """Is a call task a 422 on task_id, and a skipped email task a 409?"""
    call = make_task(session, world.rep, now, StepType.CALL)
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, call, now)
    assert "call task" in fields(exc)["task_id"]
    task = make_task(session, world.rep, now)
    skip_task(session, world.rep, task.id, now=now)
    session.commit()
    with pytest.raises(Conflict):
        schedule(session, world.rep, task, now)


def test_contact_without_an_address_or_empty_body_is_refused(session: Session, world: World,
                                                              now: datetime):
    """Is an email to a contact whose address was removed, or with no text, refused by field?"""
    task = make_task(session, world.rep, now)
    contact = session.get(Contact, task.contact_id)
    contact.email = None
    session.commit()
    with pytest.raises(Invalid) as exc:
        schedule(session, world.rep, task, now, html="<p> </p>")
    assert set(fields(exc)) == {"to", "html"}


def test_cancel_withdraws_the_unclaimed_send(session: Session, world: World, now: datetime):
    """Does cancelling a task's send mark it cancelled with the reason (nothing deleted)?"""
    task = make_task(session, world.rep, now)
    send = schedule(session, world.rep, task, now)
    session.commit()
    assert outbox.cancel_task_send(session, world.rep, task.id, reason="sent by hand", now=now)
    session.commit()
    session.refresh(send)
    assert send.status is SendStatus.CANCELLED and send.reason == "cancelled: sent by hand"
    assert not outbox.cancel_task_send(session, world.rep, task.id, reason="again", now=now)


# -- the API ----------------------------------------------------------------------------------


def freeze(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr("server.sending.schedule_views.utcnow", lambda: moment)


def test_api_schedules_and_defaults_to_now(client: FlaskClient, session: Session, world: World,
                                           now: datetime, monkeypatch: pytest.MonkeyPatch):
    """Does POST /api/tasks/{id}/schedule put the email in the outbox, due now by default?"""
    freeze(monkeypatch, now)
    task = make_task(session, world.rep, now)
    r = client.post(f"/api/tasks/{task.id}/schedule", headers=world.auth(world.rep),
                    json={"subject": "Hello Grace", "html": "<p>Hi Grace</p>"})
    assert r.status_code == 200, r.json
    body = r.json
    assert (body["task_id"], body["status"], body["to_email"], body["text"]) == (
        task.id, "scheduled", "grace@example.com", "Hi Grace")
    assert datetime.fromisoformat(body["due_at"]) == now
    assert body["mailbox_connected"] is False
    later = (now + timedelta(days=1)).isoformat()
    r2 = client.post(f"/api/tasks/{task.id}/schedule", headers=world.auth(world.rep),
                     json={"subject": "Again", "html": "<p>Hi</p>", "send_at": later})
    assert r2.status_code == 200 and r2.json["id"] == body["id"]


def test_api_bad_input(client: FlaskClient, session: Session, world: World, now: datetime,
                       monkeypatch: pytest.MonkeyPatch):
    """Are prompts, CR/LF subjects, past moments and naive datetimes 422s naming the field?"""
    freeze(monkeypatch, now)
    task = make_task(session, world.rep, now)
    h = world.auth(world.rep)
    url = f"/api/tasks/{task.id}/schedule"
    cases = [
        ({"subject": "Hi", "html": "<p>{{! Introduce yourself}}</p>"}, "html"),
        ({"subject": "Hi\r\nBcc: x@y.z", "html": "<p>Hi</p>"}, "subject"),
        ({"subject": "Hi", "html": "<p>Hi</p>",
          "send_at": (now - timedelta(days=1)).isoformat()}, "send_at"),
        ({"subject": "Hi", "html": "<p>Hi</p>", "send_at": "2026-12-01T09:00:00"}, "send_at"),
        ({"html": "<p>Hi</p>"}, "subject"),
    ]
    for body, field in cases:
        r = client.post(url, headers=h, json=body)
        assert r.status_code == 422, (body, r.json)
        assert field in [e["field"] for e in r.json["errors"]], (body, r.json)
    assert client.post(url, headers=h, json={"subject": "Hi", "html": "x" * (256 * 1024 + 1)}
                       ).status_code == 422
    assert session.scalar(select(func.count()).select_from(ScheduledSend)) == 0


def test_api_another_reps_task_is_404_and_no_token_is_401(client: FlaskClient, session: Session,
                                                          world: World, now: datetime):
    """Is another rep's task a 404, and a request without credentials a 401?"""
    task = make_task(session, world.rep, now)
    body = {"subject": "Hi", "html": "<p>Hi</p>"}
    r = client.post(f"/api/tasks/{task.id}/schedule", headers=world.auth(world.rep2), json=body)
    assert r.status_code == 404
    assert client.post(f"/api/tasks/{task.id}/schedule", json=body).status_code == 401
    assert client.post("/api/tasks/999999/schedule", headers=world.auth(world.rep),
                       json=body).status_code == 404


def test_api_is_in_the_openapi_document(client: FlaskClient):
    """Is the schedule operation described in /openapi.json with its body model?"""
    doc = client.get("/openapi.json").json
    op = doc["paths"]["/api/tasks/{task_id}/schedule"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ScheduleIn")


def test_sanitiser_keeps_safe_links_only():
    """Does the outbox sanitiser keep http, https and mailto links and drop the others?"""
    out = sanitise_html('<a href="https://a.example">a</a><a href="mailto:x@y.z">m</a>'
                               '<a href="javascript:alert(1)">j</a><a href="data:x">d</a>')
    assert 'href="https://a.example"' in out and 'href="mailto:x@y.z"' in out
    assert "javascript" not in out and "data:" not in out



def test_api_complete_withdraws_the_waiting_send(client: FlaskClient, session: Session,
                                                 world: World, now: datetime):
    """Does completing a task through the API (as the add-ins do) cancel its unclaimed send?"""
    task = make_task(session, world.rep, now)
    send = schedule(session, world.rep, task, now, send_at=now + timedelta(days=1))
    session.commit()
    r = client.post(f"/api/tasks/{task.id}/complete", headers=world.auth(world.rep),
                    json={"via": "gmail"})
    assert r.status_code == 200, r.json
    session.commit()
    session.expire_all()
    stored = session.get(ScheduledSend, send.id)
    assert stored.status is SendStatus.CANCELLED
    assert stored.reason == "cancelled: marked as sent by hand"


def test_api_complete_refuses_while_the_send_is_leaving(client: FlaskClient, session: Session,
                                                        world: World, now: datetime):
    """Is a task whose email the sender has claimed left open (409) rather than closed?"""
    task = make_task(session, world.rep, now)
    send = schedule(session, world.rep, task, now)
    send.status = SendStatus.CLAIMED
    session.commit()
    r = client.post(f"/api/tasks/{task.id}/skip", headers=world.auth(world.rep))
    assert r.status_code == 409, r.json
    session.expire_all()
    assert session.get(Task, task.id).status is TaskStatus.OPEN
