"""Resolving an email that needs attention or failed: "it was sent" or "send it again".

The domain function with a passed clock and the fake transport, on SQLite and PostgreSQL:
the campaign moves on exactly as after a sent email (rules T3, T5, T6 and E3 of
docs/send-options.md), a resend is a new send the dispatcher sends, and a send is resolved
once however many people (or workers) try.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.campaigns.models import Enrollment, EnrollmentStatus, EnrollmentStep, StepStatus
from server.campaigns.progress import leave
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.errors import Conflict, Invalid
from server.feed.models import EventKind, FeedEvent
from server.sending import resolve
from server.sending import schedule as outbox
from server.sending.fake import FakeTransport, ManualClock
from server.sending.models import Resolution, ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus
from tests.conftest import PG_URL, World, email_step, make_campaign, make_contact
from tests.sending.test_dispatcher import make_dispatcher, plain_sends, rows


@pytest.fixture
def clock(now: datetime) -> ManualClock:
    return ManualClock(now)


@pytest.fixture
def fake(clock: ManualClock) -> FakeTransport:
    return FakeTransport(now=clock.now)


def two_email_campaign(session: Session, world: World, now: datetime, *,
                       follow_up: bool = False) -> int:
    """Ada in a campaign of two automatic emails; the first send's id.

    Day 1 at ``now`` (T2), day 2 same as previous (T3), optionally a follow-up (S4, E3).
    """
    first = Template(org_id=world.org.id, created_by_id=world.rep.id, name="First",
                     subject="Hello {{first_name}}", body_html="<p>Hi {{first_name}}</p>")
    second = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Second",
                      subject="Still there?" if not follow_up else "",
                      body_html="<p>Just checking in</p>")
    session.add_all([first, second])
    session.flush()
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, first, send_time=now.time()),
        email_step(2, SendOption.SAME_AS_PREVIOUS, second, follow_up=follow_up)])
    contact = make_contact(session, world.rep, "ada@example.com", first_name="Ada",
                           last_name="Lovelace")
    from server.campaigns.launch import launch

    launch(session, world.rep, campaign, [contact.id], start_at=now, now=now)
    session.commit()
    send_id = session.scalar(select(ScheduledSend.id))
    session.commit()
    assert send_id is not None
    return send_id


def to_needs_attention(app: Flask, fake: FakeTransport, clock: ManualClock) -> None:
    """Send what is due into needs_attention (a timeout, then reconciliation can't tell)."""
    fake.script["send"] = ["timeout"]
    fake.script["reconcile"] = ["unknown"]
    make_dispatcher(app, fake, clock).run_once()
    clock.advance(3600)
    assert make_dispatcher(app, fake, clock).run_once().needs_attention == 1


def step_rows(session: Session) -> list[EnrollmentStep]:
    out = list(session.scalars(select(EnrollmentStep).order_by(EnrollmentStep.position)
                               .execution_options(populate_existing=True)))
    session.commit()
    return out


def resolve_now(app: Flask, user, send_id: int, outcome: str, now: datetime,
                **kwargs) -> resolve.Resolved:
    """Resolve in a writing session of its own, committed (as a request would)."""
    s: Session = app.extensions["relay.write_sessionmaker"]()
    try:
        user = s.get(type(user), user.id)
        done = resolve.resolve_send(s, user, send_id, outcome, now, **kwargs)
        s.commit()
        return done
    finally:
        s.close()


def events(session: Session, kind: EventKind) -> list[FeedEvent]:
    out = list(session.scalars(select(FeedEvent).where(FeedEvent.kind == kind)
                               .order_by(FeedEvent.id)))
    session.commit()
    return out


def test_it_was_sent_moves_the_campaign_on_T3_T5_T6(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """After "it was sent", does the second email follow as after a real send (T3, T5, T6)?

    The first step is done at that moment and the second email is scheduled for day 2 at the
    time of day the first really left.
    """
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    assert [s.status for s in step_rows(session)] == [StepStatus.ACTIVE, StepStatus.PENDING]
    resolved_at = clock.advance(1800)  # 11:30 UTC on day 1
    done = resolve_now(app, world.rep, send_id, "sent", resolved_at)
    assert done.resend is None
    first, second = rows(session)
    assert first.status is SendStatus.SENT and first.resolution is Resolution.SENT
    assert (first.resolved_by_id, first.resolved_at, first.sent_at) == (
        world.rep.id, resolved_at, resolved_at)
    steps = step_rows(session)
    assert [s.status for s in steps] == [StepStatus.DONE, StepStatus.ACTIVE]
    assert steps[0].done_at == resolved_at
    # T3: day 2 at the time of day the first email was sent (11:30), not its plan (10:00).
    assert second.status is SendStatus.SCHEDULED
    assert second.due_at == datetime(2026, 11, 25, 11, 30, tzinfo=UTC)
    assert second.enrollment_step_id == steps[1].id
    [sent_event] = events(session, EventKind.SEND_SENT)
    assert sent_event.data["send_id"] == send_id
    [note] = events(session, EventKind.SEND_RESOLVED)
    assert note.data["outcome"] == "sent" and "confirmed" in note.summary
    assert "Ada Lovelace" in note.summary
    # The second email then leaves on its own, once; the first was never delivered again.
    clock.advance((second.due_at - clock.now()).total_seconds())
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    assert fake.deliveries() == {second.id: 1}


def test_it_was_sent_at_a_given_moment_T3(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a ``sent_at`` the rep gives become the sent time the next email copies (T3)?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    left = now + timedelta(minutes=7)
    resolve_now(app, world.rep, send_id, "sent", clock.now(), sent_at=left)
    first, second = rows(session)
    assert first.sent_at == left
    assert second.due_at == datetime(2026, 11, 25, 10, 7, tzinfo=UTC)
    for bad in (clock.now() + timedelta(hours=1), now - timedelta(minutes=1)):
        with pytest.raises((Conflict, Invalid)):
            resolve_now(app, world.rep, send_id, "sent", clock.now(), sent_at=bad)


def test_bad_sent_at_is_refused_naming_the_field(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is a sent_at in the future, before the due moment, or given with "resend" refused?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    cases = [("sent", clock.now() + timedelta(hours=1)), ("sent", now - timedelta(minutes=1)),
             ("resend", now)]
    for outcome, bad in cases:
        with pytest.raises(Invalid) as err:
            resolve_now(app, world.rep, send_id, outcome, clock.now(), sent_at=bad)
        assert err.value.errors[0].field == "sent_at"
    [row, *_] = rows(session)
    assert row.status is SendStatus.NEEDS_ATTENTION and row.resolution is None


def test_send_it_again_is_a_new_send_and_the_follow_up_threads_on_it_T3_T5_E3(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is "send it again" a new send, and does the follow-up thread on it (T3, T5, E3)?

    A new row (new Message-ID, due now, linked to the old one) that the dispatcher sends,
    after which the follow-up is scheduled and sent in the thread of the resent email.
    """
    seen = []
    real = fake.create_draft

    def spy(message):
        seen.append(message)
        return real(message)

    fake.create_draft = spy  # type: ignore[method-assign]
    send_id = two_email_campaign(session, world, now, follow_up=True)
    to_needs_attention(app, fake, clock)
    [old] = rows(session)
    step_id = old.enrollment_step_id
    at = clock.advance(1800)
    done = resolve_now(app, world.rep, send_id, "resend", at)
    assert done.resend is not None
    old, new = rows(session)
    assert old.status is SendStatus.RESENT and old.resolution is Resolution.RESENT
    assert old.enrollment_step_id is None and old.resolved_by_id == world.rep.id
    assert new.resend_of_id == old.id and new.status is SendStatus.SCHEDULED
    assert new.due_at == at and new.enrollment_step_id == step_id
    assert (new.subject, new.html, new.text) == (old.subject, old.html, old.text)
    assert new.message_id is None and new.draft_id is None
    [note] = events(session, EventKind.SEND_RESOLVED)
    assert note.data["outcome"] == "resend" and note.data["resend_id"] == new.id
    assert "again" in note.summary
    # Not the campaign yet: the step waits for the new send.
    assert [s.status for s in step_rows(session)] == [StepStatus.ACTIVE, StepStatus.PENDING]

    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    old, new, follow = rows(session)
    assert new.status is SendStatus.SENT and new.sent_at == at
    assert new.message_id and new.message_id != old.message_id
    assert new.message_id.startswith(f"<relay.{new.id}.")
    assert fake.deliveries() == {new.id: 1}  # the timed-out first attempt never arrived
    steps = step_rows(session)
    assert [s.status for s in steps] == [StepStatus.DONE, StepStatus.ACTIVE]
    assert follow.enrollment_step_id == steps[1].id
    assert follow.due_at == datetime(2026, 11, 25, 11, 30, tzinfo=UTC)  # T3: as really sent
    clock.advance((follow.due_at - clock.now()).total_seconds())
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    reply = seen[-1]
    assert reply.mime["In-Reply-To"] == new.message_id  # E3: in the resent email's thread
    assert reply.mime["Subject"] == "Re: Hello Ada"


def test_resolving_twice_is_a_conflict_that_says_so(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a second resolution, either way, change nothing and say what happened?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    resolve_now(app, world.rep, send_id, "resend", clock.now())
    for outcome in ("sent", "resend"):
        with pytest.raises(Conflict, match="already sent again"):
            resolve_now(app, world.admin, send_id, outcome, clock.now())
    assert len(rows(session)) == 2
    assert len(events(session, EventKind.SEND_RESOLVED)) == 1


def test_a_failed_email_can_be_sent_again_but_not_marked_sent(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is "it was sent" refused for a failed email, and "send it again" sent?

    A refused email is known not to have left; sent again, it goes to the contact's current
    address.
    """
    [send_id] = plain_sends(session, world.rep, now, 1)
    fake.script["send"] = ["permanent"]
    assert make_dispatcher(app, fake, clock).run_once().failed == 1
    with pytest.raises(Conflict, match="known not to have left"):
        resolve_now(app, world.rep, send_id, "sent", clock.now())
    [old] = rows(session)
    contact_id = old.contact_id
    from server.contacts.models import Contact

    session.execute(update(Contact).where(Contact.id == contact_id)
                    .values(email="fixed@example.com"))
    session.commit()
    done = resolve_now(app, world.rep, send_id, "resend", clock.now())
    assert done.resend is not None
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    old, new = rows(session)
    assert old.status is SendStatus.RESENT and new.status is SendStatus.SENT
    assert new.to_email == "fixed@example.com" and old.to_email == "p0@example.com"
    assert fake.deliveries() == {new.id: 1}
    listed, total = outbox.list_sends(session, world.rep, outbox.FAILED)
    session.commit()
    assert (listed, total) == ([], 0)


def test_a_campaign_email_failed_on_a_missing_field_goes_out_once_it_is_filled_E5_T5(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """After the missing field (E5) is filled in, does "send it again" render and send it?"""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Needs",
                   subject="Hi", body_html="<p>Your plan: {{custom_field_plan}}</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, tpl, send_time=now.time())])
    contact = make_contact(session, world.rep, "nofield@example.com")
    from server.campaigns.launch import launch

    launch(session, world.rep, campaign, [contact.id], start_at=now, now=now)
    session.commit()
    assert make_dispatcher(app, fake, clock).run_once().failed == 1
    [old] = rows(session)
    assert old.status is SendStatus.FAILED and "custom_field_plan" in (old.reason or "")
    contact.custom_fields = {"plan": "Pro"}
    session.commit()
    resolve_now(app, world.rep, old.id, "resend", clock.now())
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    old, new = rows(session)
    assert new.status is SendStatus.SENT and "Your plan: Pro" in (new.html or "")
    assert [s.status for s in step_rows(session)] == [StepStatus.DONE]  # T5: the last step


def test_it_was_sent_completes_a_task_email(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does "it was sent" for a rep's task email complete the task with that moment (T4)?"""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="T",
                   subject="Hello", body_html="<p>x</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    from server.campaigns.launch import launch

    launch(session, world.rep, campaign, [contact.id], now=now)
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    send = outbox.schedule_task_email(session, world.rep, task.id, subject="Hello Grace",
                                      html="<p>We met.</p>", send_at=now, now=now)
    session.commit()
    to_needs_attention(app, fake, clock)
    at = clock.advance(60)
    resolve_now(app, world.admin, send.id, "sent", at)  # an admin of the org may
    done = session.get(Task, task.id, populate_existing=True)
    assert done is not None and done.status is TaskStatus.DONE and done.sent_at == at
    [row] = rows(session)
    assert done.message_id == row.message_id and row.resolved_by_id == world.admin.id


def test_no_second_send_when_the_task_email_was_scheduled_again_by_hand(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """If the rep already rescheduled the task's email from compose, is "resend" refused?"""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="T",
                   subject="Hello", body_html="<p>x</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    from server.campaigns.launch import launch

    launch(session, world.rep, campaign, [contact.id], now=now)
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    send = outbox.schedule_task_email(session, world.rep, task.id, subject="Hello Grace",
                                      html="<p>We met.</p>", send_at=now, now=now)
    session.commit()
    to_needs_attention(app, fake, clock)
    outbox.schedule_task_email(session, world.rep, task.id, subject="Hello again",
                               html="<p>We met.</p>", send_at=clock.now(), now=clock.now())
    session.commit()
    with pytest.raises(Conflict, match="already scheduled again"):
        resolve_now(app, world.rep, send.id, "resend", clock.now())
    assert [r.status for r in rows(session)] == [SendStatus.NEEDS_ATTENTION,
                                                 SendStatus.SCHEDULED]


def test_no_resend_to_someone_who_left_the_campaign_X1(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """After the person left (X1, replied), is "send it again" refused, "it was sent" not?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    enrollment_id = session.scalar(select(Enrollment.id))
    assert enrollment_id is not None
    leave(session, enrollment_id, EnrollmentStatus.REPLIED, "they replied", clock.now())
    session.commit()
    with pytest.raises(Conflict, match="no longer in the campaign"):
        resolve_now(app, world.rep, send_id, "resend", clock.now())
    resolve_now(app, world.rep, send_id, "sent", clock.now())
    [row] = rows(session)
    assert row.status is SendStatus.SENT
    assert [s.status for s in step_rows(session)] == [StepStatus.CANCELLED] * 2


def test_who_may_resolve_another_rep_and_another_org_see_nothing(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is the send not found for another rep and another org, and resolvable by an admin?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    for user in (world.rep2, world.outsider):
        with pytest.raises(resolve.SendNotFound):
            resolve_now(app, user, send_id, "sent", clock.now())
    with pytest.raises(resolve.SendNotFound):
        resolve_now(app, world.rep, send_id + 1000, "sent", clock.now())
    resolve_now(app, world.admin, send_id, "sent", clock.now())
    assert rows(session)[0].resolved_by_id == world.admin.id


def test_a_row_under_a_live_lease_is_not_resolved(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is a row a worker holds (a live lease) left alone, and resolvable once it expired?"""
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    session.execute(update(ScheduledSend).where(ScheduledSend.id == send_id).values(
        lease_token="held-by-a-worker", lease_expires_at=clock.now() + timedelta(seconds=60)))
    session.commit()
    with pytest.raises(Conflict, match="being worked on"):
        resolve_now(app, world.rep, send_id, "sent", clock.now())
    assert rows(session)[0].status is SendStatus.NEEDS_ATTENTION
    later = clock.advance(61)
    resolve_now(app, world.rep, send_id, "sent", later)
    row = rows(session)[0]
    assert row.status is SendStatus.SENT and row.lease_token is None


@pytest.mark.skipif(not PG_URL, reason="SQLite serialises writers (BEGIN IMMEDIATE): no race")
def test_two_people_resolving_at_once_resolve_it_once(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport, monkeypatch: pytest.MonkeyPatch):
    """When two people resolve at once, does exactly one win and the other get a 409?

    Both read the row before either writes; PostgreSQL re-checks the status after the row
    lock, so the second conditional UPDATE changes nothing.
    """
    send_id = two_email_campaign(session, world, now)
    to_needs_attention(app, fake, clock)
    both_read = threading.Barrier(2, timeout=30)
    real = resolve.may_resolve

    def after_reading(user, send):
        both_read.wait()  # each has read the row as needs_attention
        return real(user, send)

    monkeypatch.setattr(resolve, "may_resolve", after_reading)
    results: dict[str, object] = {}

    def attempt(user, outcome):
        try:
            results[outcome] = resolve_now(app, user, send_id, outcome, clock.now())
        except Exception as exc:  # noqa: BLE001  (the loser's error is what is checked)
            results[outcome] = exc

    threads = [threading.Thread(target=attempt, args=(world.rep, "sent")),
               threading.Thread(target=attempt, args=(world.admin, "resend"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [k for k, v in results.items() if isinstance(v, resolve.Resolved)]
    lost = [v for v in results.values() if isinstance(v, Conflict)]
    assert len(won) == 1 and len(lost) == 1, results
    first, other = rows(session)  # the next step's send ("sent") or the new send ("resend")
    assert first.status is (SendStatus.SENT if won == ["sent"] else SendStatus.RESENT)
    assert other.status is SendStatus.SCHEDULED
    assert len(events(session, EventKind.SEND_RESOLVED)) == 1
