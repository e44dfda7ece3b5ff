"""The outbox dispatcher with the fake transport, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.launch import launch
from server.campaigns.models import EnrollmentStep, StepStatus
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from server.feed.models import EventKind, FeedEvent
from server.sending import schedule as outbox
from server.sending.dispatcher import (
    CRASH_POINTS,
    Crash,
    Dispatcher,
    DispatchSettings,
    env_crash_hook,
)
from server.sending.fake import FakeResolver, FakeTransport, ManualClock
from server.sending.models import MailboxPace, OrgSendPolicy, ScheduledSend, SendStatus
from server.sending.pacing import Backoff, Pace
from server.tasks.models import Task, TaskStatus
from tests.conftest import World, email_step, make_campaign, make_contact, task_step

LEASE = timedelta(seconds=60)


def settings(**changes) -> DispatchSettings:
    base = dict(lease=LEASE, margin=timedelta(seconds=10), batch=20, pace=Pace(25, 45),
                daily_cap=1000, backoff=Backoff(base=10, cap=600, max_retries=5))
    base.update(changes)
    return DispatchSettings(**base)


def make_dispatcher(app: Flask, transport: FakeTransport, clock: ManualClock, *,
                    owners=None, crash=None, **changes) -> Dispatcher:
    return Dispatcher(app.extensions["relay.write_sessionmaker"],
                      FakeResolver(transport, owners), settings=settings(**changes),
                      clock=clock, draw=lambda: 0.5, crash=crash)


@pytest.fixture
def clock(now: datetime) -> ManualClock:
    return ManualClock(now)


@pytest.fixture
def fake(clock: ManualClock) -> FakeTransport:
    return FakeTransport(now=clock.now)


def rows(session: Session) -> list[ScheduledSend]:
    out = list(session.scalars(select(ScheduledSend).order_by(ScheduledSend.id)
                               .execution_options(populate_existing=True)))
    session.commit()
    return out


def plain_sends(session: Session, owner: User, now: datetime, count: int,
                prefix: str = "p") -> list[int]:
    """Outbox rows with their email written (like a scheduled task email), all due."""
    ids = []
    for i in range(count):
        contact = make_contact(session, owner, f"{prefix}{i}@example.com")
        send = ScheduledSend(org_id=owner.org_id, owner_id=owner.id, contact_id=contact.id,
                             due_at=now - timedelta(seconds=count - i), to_email=contact.email,
                             subject=f"Hi {i}", html=f"<p>Hi {i}</p>", text=f"Hi {i}")
        session.add(send)
        session.flush()
        ids.append(send.id)
    session.commit()
    return ids


def automatic_campaign(session: Session, world: World, now: datetime, *, follow_up=False,
                       second=None) -> int:
    """A person in a campaign whose first step is an automatic email due now; the send id."""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Auto",
                   subject="Hello {{first_name}}", body_html="<p>Hi {{first_name}}</p>")
    tpl2 = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Again",
                    subject="", body_html="<p>Just checking in</p>")
    session.add_all([tpl, tpl2])
    session.flush()
    steps = [email_step(1, SendOption.AT_TIME, tpl, send_time=now.time())]
    if follow_up:
        steps.append(email_step(1, SendOption.SAME_AS_PREVIOUS, tpl2, follow_up=True))
    steps.append(second or task_step(2))
    campaign = make_campaign(session, world.rep, steps)
    contact = make_contact(session, world.rep, "ada@example.com", first_name="Ada")
    launch(session, world.rep, campaign, [contact.id], start_at=now, now=now)
    session.commit()
    send = session.scalar(select(ScheduledSend).where(ScheduledSend.contact_id == contact.id))
    session.commit()
    assert send is not None
    return send.id


def feed_kinds(session: Session) -> list[EventKind]:
    kinds = list(session.scalars(select(FeedEvent.kind).order_by(FeedEvent.id)))
    session.commit()
    return kinds


def test_automatic_email_is_sent_once_and_moves_the_campaign_on(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a due automatic email go out once, rendered, and make the next step active (T6)?"""
    send_id = automatic_campaign(session, world, now)
    result = make_dispatcher(app, fake, clock).run_once()
    assert (result.claimed, result.sent) == (1, 1)
    [row] = rows(session)
    assert row.status is SendStatus.SENT and row.sent_at == now
    assert row.message_id and row.message_id.startswith(f"<relay.{send_id}.")
    assert row.lease_token is None and row.draft_id and row.provider_message_id
    assert fake.deliveries() == {send_id: 1}
    [(_, _, _)] = fake.delivered
    msg = next(c for c in fake.calls if c.op == "send")
    assert msg.outcome == "ok"
    steps = session.scalars(select(EnrollmentStep.status).order_by(EnrollmentStep.position))
    assert list(steps) == [StepStatus.DONE, StepStatus.ACTIVE]
    session.commit()
    assert session.scalar(select(func.count()).select_from(Task)) == 1
    session.commit()
    assert EventKind.SEND_SENT in feed_kinds(session)
    # Nothing more to do: a second pass claims nothing and sends nothing.
    assert make_dispatcher(app, fake, clock).run_once().claimed == 0
    assert fake.deliveries() == {send_id: 1}


def test_rendered_email_carries_the_template_and_our_headers(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is the automatic email the step's template rendered for the contact, from the rep?"""
    send_id = automatic_campaign(session, world, now)
    seen = []
    real = fake.create_draft

    def spy(message):
        seen.append(message)
        return real(message)

    fake.create_draft = spy  # type: ignore[method-assign]
    make_dispatcher(app, fake, clock).run_once()
    [message] = seen
    assert message.mime["Subject"] == "Hello Ada"
    assert message.mime["To"] == "ada@example.com"
    assert "rep@a.test" in message.mime["From"]
    assert message.mime["X-Relay-Send"] == str(send_id)
    assert "Hi Ada" in message.mime.get_body(("html",)).get_content()
    [row] = rows(session)
    assert row.subject == "Hello Ada" and "Hi Ada" in (row.html or "")


def test_follow_up_is_sent_in_the_thread_of_the_previous_email(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does an automatic follow-up reply to the first email's Message-ID and thread (E3)?"""
    automatic_campaign(session, world, now, follow_up=True)
    seen = []
    real = fake.create_draft

    def spy(message):
        seen.append(message)
        return real(message)

    fake.create_draft = spy  # type: ignore[method-assign]
    make_dispatcher(app, fake, clock).run_once()
    clock.advance(60)
    make_dispatcher(app, fake, clock).run_once()
    first, second = rows(session)
    assert first.status is second.status is SendStatus.SENT
    assert second.due_at == first.sent_at  # same_as_previous: the real sent time (T3)
    follow = seen[1]
    assert follow.mime["In-Reply-To"] == first.message_id
    assert follow.mime["References"] == first.message_id
    assert follow.thread_id == first.thread_id and first.thread_id
    assert follow.mime["Subject"] == "Re: Hello Ada"
    assert "Hi Ada" in follow.mime.get_body(("plain",)).get_content()  # the quoted first


def test_task_email_sent_completes_its_task_with_sent_at(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a task email scheduled by the rep complete its task, with the real sent time?"""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="T",
                   subject="Hello", body_html="<p>x</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl),
                                                  task_step(2)])
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    launch(session, world.rep, campaign, [contact.id], now=now)
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    outbox.schedule_task_email(session, world.rep, task.id, subject="Hello Grace",
                               html="<p>We met.</p>", send_at=now + timedelta(minutes=5),
                               now=now)
    session.commit()
    assert make_dispatcher(app, fake, clock).run_once().claimed == 0  # not due yet
    clock.advance(300)
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    done = session.get(Task, task.id, populate_existing=True)
    assert done is not None
    assert done.status is TaskStatus.DONE and done.sent_at == now + timedelta(minutes=5)
    [row] = rows(session)
    assert done.message_id == row.message_id
    assert session.scalar(select(func.count()).select_from(Task)
                          .where(Task.type == StepType.CALL)) == 1
    session.commit()


def test_a_task_email_carries_the_tasks_opaque_tag_not_its_id(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does X-Relay-Task carry the task's stored random tag (the same on a rebuild), not its id?"""
    from server.tasks.tags import TAG, TaskTag, task_id_of

    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="T",
                   subject="Hello", body_html="<p>x</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    launch(session, world.rep, campaign, [contact.id], now=now)
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    outbox.schedule_task_email(session, world.rep, task.id, subject="Hello Grace",
                               html="<p>We met.</p>", send_at=now, now=now)
    session.commit()
    seen = []
    real = fake.create_draft

    def spy(message):
        seen.append(message)
        return real(message)

    fake.create_draft = spy  # type: ignore[method-assign]
    assert make_dispatcher(app, fake, clock).run_once().sent == 1
    [message] = seen
    value = message.mime["X-Relay-Task"]
    assert TAG.match(value) and value != str(task.id)
    session.expire_all()
    assert session.scalar(select(TaskTag.tag).where(TaskTag.task_id == task.id)) == value
    assert task_id_of(session, value) == task.id
    assert task_id_of(session, str(task.id)) == task.id  # an old numeric header still reads


def test_permanent_error_fails_with_reason_in_command_center_and_feed(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a refused recipient end `failed`, named in the send's reason and the Live Feed?"""
    [send_id] = plain_sends(session, world.rep, now, 1)
    fake.script["send"] = ["permanent"]
    assert make_dispatcher(app, fake, clock).run_once().failed == 1
    [row] = rows(session)
    assert row.status is SendStatus.FAILED
    assert row.reason == "failed: send: 550 recipient rejected"
    listed, total = outbox.list_sends(session, world.rep, outbox.FAILED)
    assert total == 1 and listed[0].reason == row.reason
    event = session.scalar(select(FeedEvent).where(FeedEvent.kind == EventKind.SEND_FAILED))
    assert event is not None and event.data["send_id"] == send_id
    assert "550 recipient rejected" in event.summary
    assert fake.deliveries() == {}


def test_bad_template_field_fails_without_calling_the_provider(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is an email with a blocking missing field (E5) failed, naming it, before any call?"""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Needs",
                   subject="Hi", body_html="<p>{{custom_field_plan}}</p>")
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, tpl, send_time=now.time())])
    contact = make_contact(session, world.rep, "nofield@example.com")
    launch(session, world.rep, campaign, [contact.id], start_at=now, now=now)
    session.commit()
    assert make_dispatcher(app, fake, clock).run_once().failed == 1
    [row] = rows(session)
    assert row.status is SendStatus.FAILED and "custom_field_plan" in (row.reason or "")
    assert fake.calls == []


def test_daily_limit_pauses_the_mailbox_for_24_hours(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """After a daily-limit answer, does the mailbox send nothing for 24 h, then resume?"""
    plain_sends(session, world.rep, now, 3)
    fake.script["send"] = ["daily"]
    result = make_dispatcher(app, fake, clock).run_once()
    assert result.deferred >= 1 and fake.deliveries() == {}
    pace = session.get(MailboxPace, world.rep.id)
    assert pace is not None and pace.paused_until == now + timedelta(hours=24)
    assert "daily sending limit" in (pace.pause_reason or "")
    session.commit()
    statuses = {r.status for r in rows(session)}
    assert SendStatus.SENT not in statuses
    clock.advance(3600)
    assert make_dispatcher(app, fake, clock).run_once().sent == 0
    clock.advance(23 * 3600 + 1)
    make_dispatcher(app, fake, clock).run_once()
    assert [r.status for r in rows(session)] == [SendStatus.SENT] * 3
    assert sorted(fake.deliveries().values()) == [1, 1, 1]


def test_transient_429_on_send_is_retried_from_its_draft_after_retry_after(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is a 429 on send (refused, so not sent) retried from its draft after Retry-After?

    It goes back to `drafted`, never through `uncertain`, and is sent once later.
    """
    [send_id] = plain_sends(session, world.rep, now, 1)
    fake.retry_after = 30
    fake.script["send"] = ["429"]
    result = make_dispatcher(app, fake, clock).run_once()
    assert (result.retried, result.uncertain) == (1, 0)
    [row] = rows(session)
    assert row.status is SendStatus.DRAFTED and row.next_attempt_at == now + timedelta(
        seconds=30)
    assert row.retries == 1 and row.lease_token is None and "429" in (row.last_error or "")
    assert make_dispatcher(app, fake, clock).run_once().claimed == 0  # honours Retry-After
    clock.advance(30)
    result = make_dispatcher(app, fake, clock).run_once()
    assert result.sent == 1
    ops = [c.op for c in fake.calls]
    assert ops == ["draft", "send", "send"]  # the draft is reused, nothing reconciled
    assert fake.deliveries() == {send_id: 1}


def test_transient_send_errors_give_up_after_max_retries(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Do repeated 503s on send end `failed` after max_retries, never `uncertain`?"""
    plain_sends(session, world.rep, now, 1)
    fake.mode["send"] = "503"
    d = make_dispatcher(app, fake, clock, backoff=Backoff(base=10, cap=600, max_retries=3))
    seen = []
    for _ in range(3):
        d.run_once()
        [row] = rows(session)
        seen.append(row.status)
        if row.next_attempt_at is not None:
            clock.moment = row.next_attempt_at
    assert seen == [SendStatus.DRAFTED, SendStatus.DRAFTED, SendStatus.FAILED]
    [row] = rows(session)
    assert "gave up after 3 attempts" in (row.reason or "")
    assert fake.deliveries() == {}


def test_draft_errors_back_off_with_jitter_and_give_up(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Do 503s on drafting retry with growing backoff and fail after max_retries?"""
    plain_sends(session, world.rep, now, 1)
    fake.mode["draft"] = "503"
    dispatcher = make_dispatcher(app, fake, clock)
    waits = []
    for _ in range(4):
        assert dispatcher.run_once().retried == 1
        [row] = rows(session)
        assert row.status is SendStatus.SCHEDULED
        assert row.next_attempt_at is not None
        waits.append((row.next_attempt_at - clock.now()).total_seconds())
        clock.moment = row.next_attempt_at
    assert waits == [5.0, 10.0, 20.0, 40.0]  # draw 0.5 × 10·2^(n-1)
    assert dispatcher.run_once().failed == 1
    [row] = rows(session)
    assert row.status is SendStatus.FAILED and "gave up after 5 attempts" in (row.reason or "")


def test_dropped_answer_is_reconciled_as_sent(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A send accepted but whose answer was lost: found by reconciliation, never re-sent?"""
    send_id = automatic_campaign(session, world, now)
    fake.script["send"] = ["drop"]
    assert make_dispatcher(app, fake, clock).run_once().uncertain == 1
    clock.advance(3600)
    result = make_dispatcher(app, fake, clock).run_once()
    assert result.sent == 1
    [row] = rows(session)
    assert row.status is SendStatus.SENT
    assert fake.deliveries() == {send_id: 1}
    steps = list(session.scalars(select(EnrollmentStep.status)
                                 .order_by(EnrollmentStep.position)))
    session.commit()
    assert steps == [StepStatus.DONE, StepStatus.ACTIVE]


def test_unknown_outcome_needs_attention_never_a_guess(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """When reconciliation cannot tell, does the send stop at needs_attention (and say so)?"""
    plain_sends(session, world.rep, now, 1)
    fake.script["send"] = ["timeout"]
    fake.script["reconcile"] = ["unknown"]
    make_dispatcher(app, fake, clock).run_once()
    clock.advance(3600)
    assert make_dispatcher(app, fake, clock).run_once().needs_attention == 1
    [row] = rows(session)
    assert row.status is SendStatus.NEEDS_ATTENTION and "Sent folder" in (row.reason or "")
    assert EventKind.SEND_FAILED in feed_kinds(session)
    clock.advance(86400)
    assert make_dispatcher(app, fake, clock).run_once().claimed == 0


def test_lost_lease_means_no_provider_call_and_no_write(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A worker whose lease ran out (and was re-claimed) calls nothing and changes nothing."""
    [send_id] = plain_sends(session, world.rep, now, 1)
    stalled = make_dispatcher(app, fake, clock)
    [held] = stalled.claim_batch()
    clock.advance(LEASE.total_seconds() + 1)
    other = make_dispatcher(app, fake, clock)
    assert other.run_once().sent == 1
    before = [(r.status, r.updated_at, r.lease_token, r.message_id) for r in rows(session)]
    calls = len(fake.calls)
    assert stalled.process(held) == "lost"
    assert len(fake.calls) == calls
    assert [(r.status, r.updated_at, r.lease_token, r.message_id)
            for r in rows(session)] == before
    assert fake.deliveries() == {send_id: 1}


def test_too_little_lease_left_means_no_provider_call(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does a worker stalled to within the margin of its lease's end refuse to send?

    It stalls once after marking `sending`: no call; the row goes back to `drafted` (never
    `uncertain`), and is sent exactly once from its draft when claimed again.
    """
    [send_id] = plain_sends(session, world.rep, now, 1)
    stalls = []

    def stall(point: str) -> None:
        if point == "after_sending" and not stalls:
            stalls.append(point)
            clock.advance(LEASE.total_seconds() - 5)  # 5 s left, margin 10 s

    result = make_dispatcher(app, fake, clock, crash=stall, max_batches=1).run_once()
    assert (result.returned, result.sent, result.uncertain) == (1, 0, 0)
    assert [c.op for c in fake.calls] == ["draft"]
    [row] = rows(session)
    assert row.status is SendStatus.DRAFTED and row.lease_token is None and row.draft_id
    result = make_dispatcher(app, fake, clock).run_once()
    assert (result.swept, result.sent) == (0, 1)
    assert [c.op for c in fake.calls] == ["draft", "send"]
    assert fake.deliveries() == {send_id: 1}


def test_a_stall_past_the_whole_lease_is_reconciled_not_resent(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A worker stalled past its whole lease while `sending`: no call, no write; reconciled."""
    [send_id] = plain_sends(session, world.rep, now, 1)

    def stall(point: str) -> None:
        if point == "after_sending":
            clock.advance(LEASE.total_seconds() + 1)

    assert make_dispatcher(app, fake, clock, crash=stall, max_batches=1).run_once().lost == 1
    assert [c.op for c in fake.calls] == ["draft"]
    [row] = rows(session)
    assert row.status is SendStatus.SENDING
    result = make_dispatcher(app, fake, clock).run_once()
    assert (result.swept, result.rescheduled, result.sent) == (1, 1, 1)
    assert [c.op for c in fake.calls] == ["draft", "reconcile", "send"]
    assert fake.deliveries() == {send_id: 1}


# in_sweep_tx is only reached with an expired lease to sweep (test_dispatcher_claim.py).
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "in_sweep_tx"])
def test_a_crash_at_any_point_sends_at_most_once_and_recovers(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport, point: str):
    """After a worker dies at each crash point, does recovery end with one delivery, sent?"""
    send_id = automatic_campaign(session, world, now)

    def die(at: str) -> None:
        if at == point:
            raise Crash(at)

    with pytest.raises(Crash):
        make_dispatcher(app, fake, clock, crash=die).run_once()
    clock.advance(LEASE.total_seconds() + 1)
    make_dispatcher(app, fake, clock).run_once()  # sweep, reconcile, resend if needed
    clock.advance(3600)
    make_dispatcher(app, fake, clock).run_once()
    [row] = rows(session)
    assert row.status is SendStatus.SENT, (point, row.status, row.last_error)
    assert row.lease_token is None
    assert fake.deliveries() == {send_id: 1}
    steps = list(session.scalars(select(EnrollmentStep.status)
                                 .order_by(EnrollmentStep.position)))
    session.commit()
    assert steps == [StepStatus.DONE, StepStatus.ACTIVE]


def test_pace_limits_each_mailbox_to_25_every_45_seconds(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """With 30 due emails, do 25 go now, none 10 s later and the rest after 45 s?"""
    plain_sends(session, world.rep, now, 30)
    d = make_dispatcher(app, fake, clock)
    assert d.run_once().sent == 25
    clock.advance(10)
    assert d.run_once().sent == 0
    clock.advance(35)
    assert d.run_once().sent == 5
    assert sum(fake.deliveries().values()) == 30


def test_mailboxes_are_paced_independently(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Does one rep's full pace leave another rep's mailbox free to send?"""
    plain_sends(session, world.rep, now, 30, "a")
    plain_sends(session, world.rep2, now, 5, "b")
    assert make_dispatcher(app, fake, clock).run_once().sent == 30


def test_daily_cap_per_org_and_never_above_the_provider(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Is the org's cap applied per rep per day, and the provider's lower limit preferred?"""
    plain_sends(session, world.rep, now, 6)
    session.add(OrgSendPolicy(org_id=world.org.id, daily_cap=4))
    session.commit()
    d = make_dispatcher(app, fake, clock, pace=Pace(0))
    assert d.run_once().sent == 4
    clock.advance(3600)
    assert d.run_once().sent == 0
    clock.moment = datetime(2026, 11, 25, 0, 0, 1, tzinfo=now.tzinfo)
    fake.daily_limit = 1
    assert d.run_once().sent == 1
    assert d.run_once().sent == 0


def test_a_rep_with_no_mailbox_keeps_waiting(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Are a rep's due emails left scheduled, unclaimed, while they have no mailbox?"""
    plain_sends(session, world.rep, now, 2)
    assert make_dispatcher(app, fake, clock, owners=[]).run_once().claimed == 0
    assert {r.status for r in rows(session)} == {SendStatus.SCHEDULED}
    assert {r.attempts for r in rows(session)} == {0}


def test_expired_leases_are_swept_by_state(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Expired: claimed → scheduled, sending → uncertain; drafted is resumed from its draft."""
    a, b, c = plain_sends(session, world.rep, now, 3)
    d = make_dispatcher(app, fake, clock)
    d.claim_batch()
    expired_at = now - timedelta(seconds=1)
    for send_id, status, draft in ((a, SendStatus.CLAIMED, None),
                                   (b, SendStatus.DRAFTED, "d-b"),
                                   (c, SendStatus.SENDING, "d-c")):
        row = session.get(ScheduledSend, send_id)
        assert row is not None
        row.status, row.lease_expires_at, row.draft_id = status, expired_at, draft
    session.commit()
    assert d.sweep() == 2
    got = {r.id: r.status for r in rows(session)}
    assert got == {a: SendStatus.SCHEDULED, b: SendStatus.DRAFTED, c: SendStatus.UNCERTAIN}


def test_env_crash_hook_names_known_points_only():
    """Does the test-only crash hook refuse a misspelt point, and do nothing when unset?"""
    assert env_crash_hook({})("after_draft") is None
    with pytest.raises(ValueError, match="unknown crash point"):
        env_crash_hook({"RELAY_CRASH_AT": "after_lunch"})


def test_relay_worker_sends_through_the_reps_mailbox_resolver(
        app: Flask, session: Session, world: World, now: datetime, tmp_path):
    """Does a worker pass send through the reps' MailboxResolver, and wait without a mailbox?

    With MAIL_TRANSPORT=outbox the resolver gives a rep without a mailbox the local outbox.
    """
    from server import worker

    send_id = automatic_campaign(session, world, now)
    app.config.update(MAIL_TRANSPORT="gmail", MAIL_OUTBOX_DIR=str(tmp_path / "outbox"))
    result = worker.tick(app, now=now)
    assert (result.dispatch.claimed, result.dispatch.sent) == (0, 0)  # no mailbox: waits
    assert [r.status for r in rows(session)] == [SendStatus.SCHEDULED]
    app.config["MAIL_TRANSPORT"] = "outbox"
    app.extensions.pop("relay.resolver", None)
    app.extensions.pop("relay.mailbox_resolver", None)
    assert worker.tick(app, now=now).dispatch.sent == 1
    [row] = rows(session)
    assert row.status is SendStatus.SENT
    sent = tmp_path / "outbox" / f"user-{world.rep.id}" / "sent" / f"{send_id}.eml"
    assert row.message_id and row.message_id in sent.read_text()
