"""Salesforce sync through the outbox, against the local fake Salesforce (SQLite and PG)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server import leases
from server.accounts.models import Role
from server.campaigns.launch import launch
from server.campaigns.progress import send_finished
from server.campaigns.spec import SendOption, StepType
from server.db import session_scope
from server.salesforce import enqueue, sync
from server.salesforce.fake import Failure, FakeSalesforce
from server.salesforce.models import ConnectionStatus, SyncItem, SyncKind, SyncStatus
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import CompletedVia, Task, TaskStatus
from server.tasks.service import complete_task, skip_task
from tests.conftest import (
    email_step,
    make_campaign,
    make_contact,
    make_org,
    make_template,
    make_user,
    task_step,
)
from tests.salesforce.conftest import connect, connection, items


def _world(session: Session, fake: FakeSalesforce, *, emails: tuple[str, ...] = ("ann@x.test",),
           steps=None, name: str = "Q3 outreach", in_salesforce: bool = True):
    org = make_org(session)
    rep = make_user(session, org, "rep@a.test", timezone="America/New_York")
    make_user(session, org, "admin@a.test", role=Role.ADMIN)
    contacts = [make_contact(session, rep, e, first_name="Ann", last_name=f"Lee{i}")
                for i, e in enumerate(emails)]
    template = make_template(session, rep)
    steps = steps or [task_step(1, StepType.CALL, "Intro call"),
                      email_step(2, SendOption.TASK, template)]
    campaign = make_campaign(session, rep, steps, name=name)
    session.commit()
    if in_salesforce:
        for e in emails:
            fake.add("Contact", Email=e, LastName="Lee")
    return org, rep, contacts, campaign


def _launch(app: Flask, rep_id: int, campaign_id: int, contact_ids: list[int], now: datetime):
    from server.accounts.models import User
    from server.campaigns.models import Campaign

    with session_scope(app) as s:
        launch(s, s.get(User, rep_id), s.get(Campaign, campaign_id), contact_ids, now=now)


def test_campaign_task_becomes_one_salesforce_task_with_mapped_fields(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Does a launched call task appear once in Salesforce with the documented fields?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now, subject_template=(
        "{{activity_type}} - {{activity_subject}} [{{sales_campaign_name}} "
        "d{{sales_campaign_day}}s{{sales_campaign_step}}]"))
    rep_user = fake_sf.add("User", Email="REP@a.test", IsActive=True)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    task = session.scalars(select(Task)).one()
    task.notes = "Ask about the budget\nand the timeline"
    task.priority = "high"
    session.commit()
    result = sync.run(sf_app, now)
    assert (result.claimed, result.done) == (1, 1)
    [sf_task] = fake_sf.tasks()
    [who] = [r["Id"] for r in fake_sf.state.records["Contact"].values()]
    assert sf_task["Subject"] == "Call - Intro call (Ann Lee0) [Q3 outreach d1s1]"
    assert sf_task["Status"] == "Not Started"
    assert sf_task["Priority"] == "High"
    # Due 10:00 UTC on 24 Nov is 05:00 in New York: the same date there.
    assert sf_task["ActivityDate"] == task.due_at.astimezone(
        __import__("zoneinfo").ZoneInfo("America/New_York")).date().isoformat()
    assert sf_task["Description"] == "Ask about the budget\nand the timeline"
    assert sf_task["WhoId"] == who
    assert sf_task["OwnerId"] == rep_user  # the rep's own Salesforce user
    assert sf_task["CallObject"] == f"relay:task-{task.id}"
    [item] = items(session)
    assert (item.status, item.sf_id, item.who_id) == (SyncStatus.DONE, sf_task["Id"], who)
    assert sync.run(sf_app, now + timedelta(hours=1)).claimed == 0
    assert len(fake_sf.tasks()) == 1


def test_activity_date_is_the_due_date_in_the_reps_zone(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is a task due 03:00 UTC dated the previous day for a rep in New York?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    early = now.replace(hour=3)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], early)
    sync.run(sf_app, early)
    assert session.scalars(select(Task)).one().due_at.date().isoformat() == "2026-11-24"
    assert fake_sf.tasks()[0]["ActivityDate"] == "2026-11-23"
    assert "OwnerId" not in fake_sf.tasks()[0]  # no Salesforce user: the connecting user's


def test_reminder_tasks_are_off_by_default_and_email_tasks_always_sync(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """With sync_reminders off, is a call task left out while an email task is queued?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now, sync_reminders=False)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    assert items(session) == []
    call = session.scalars(select(Task)).one()
    complete_task(session, rep, call.id, now=now)  # the email task of day 2 becomes active
    session.commit()
    [item] = items(session)
    email_task = session.scalars(select(Task).where(Task.type == StepType.EMAIL)).one()
    assert (item.kind, item.task_id) == (SyncKind.TASK, email_task.id)
    sync.run(sf_app, now)
    assert [t["Subject"] for t in fake_sf.tasks()] == [f"Email: {email_task.title}"]


def test_org_without_salesforce_queues_nothing(app: Flask, session: Session, now: datetime):
    """Does a launch in an org that never connected Salesforce leave the outbox empty?"""
    org = make_org(session)
    rep = make_user(session, org, "solo@a.test")
    contact = make_contact(session, rep, "x@x.test")
    campaign = make_campaign(session, rep, [task_step(1)])
    session.commit()
    _launch(app, rep.id, campaign.id, [contact.id], now)
    assert items(session) == []


def test_unmatched_contact_is_recorded_and_not_retried(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is a person with no Contact or Lead marked unmatched with a reason, and left alone?"""
    org, rep, contacts, campaign = _world(session, fake_sf, in_salesforce=False)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    result = sync.run(sf_app, now)
    assert result.unmatched == 1
    [item] = items(session)
    assert item.status is SyncStatus.UNMATCHED
    assert item.reason == "no Salesforce Contact or Lead has the email ann@x.test"
    calls = len(fake_sf.state.calls)
    assert sync.process(sf_app, now + timedelta(days=1)).claimed == 0
    assert len(fake_sf.state.calls) == calls
    assert fake_sf.tasks() == []


def test_a_lead_matches_when_no_contact_does(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is the Lead with the email used as WhoId, with a quote in the email escaped?"""
    org, rep, contacts, campaign = _world(session, fake_sf, emails=("o'neil@x.test",),
                                          in_salesforce=False)
    lead = fake_sf.add("Lead", Email="o'neil@x.test", LastName="O'Neil")
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    sync.run(sf_app, now)
    assert fake_sf.tasks()[0]["WhoId"] == lead


def test_5xx_backs_off_and_retries_without_duplicates(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """After a 503, does the item wait, then sync once?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.fail("create", Failure(503), Failure(500))
    assert sync.run(sf_app, now).retried == 1
    [item] = items(session)
    assert item.status is SyncStatus.PENDING and item.due_at == now + timedelta(seconds=30)
    assert "503" in (item.reason or "")
    assert sync.run(sf_app, now + timedelta(seconds=10)).claimed == 0
    later = now + timedelta(seconds=30)
    assert sync.run(sf_app, later).retried == 1
    assert items(session)[0].due_at == later + timedelta(seconds=60)
    assert sync.run(sf_app, later + timedelta(seconds=60)).done == 1
    assert len(fake_sf.tasks()) == 1


def test_connection_dropped_after_create_does_not_duplicate(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """When Salesforce created the Task but the answer was lost, is it found, not re-created?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.fail("create", Failure(drop_after=True))
    assert sync.run(sf_app, now).retried == 1
    assert len(fake_sf.tasks()) == 1  # created, but we never heard its Id
    assert sync.run(sf_app, now + timedelta(minutes=1)).done == 1
    [sf_task] = fake_sf.tasks()
    assert items(session)[0].sf_id == sf_task["Id"]


def test_external_id_field_upserts_once_across_a_dropped_answer(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """With Relay_Id__c on Task, is the Task upserted by it and never doubled?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    fake_sf.state.external_id_fields = ["Relay_Id__c"]
    connect(sf_app, fake_sf, org.id, now, external_id_field="Relay_Id__c")
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.fail("upsert", Failure(drop_after=True))
    sync.run(sf_app, now)
    sync.run(sf_app, now + timedelta(minutes=1))
    [sf_task] = fake_sf.tasks()
    task = session.scalars(select(Task)).one()
    assert sf_task["Relay_Id__c"] == f"task-{task.id}"
    assert "CallObject" not in sf_task
    assert items(session)[0].sf_id == sf_task["Id"]
    assert any(path.endswith(f"/sobjects/Task/Relay_Id__c/task-{task.id}")
               for method, path in fake_sf.state.calls if method == "PATCH")


def test_a_worker_that_died_holding_items_is_replaced_after_its_lease(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Are items claimed by a dead worker synced once after the lease runs out?"""
    org, rep, contacts, campaign = _world(session, fake_sf, emails=("a@x.test", "b@x.test"))
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [c.id for c in contacts], now)
    with session_scope(sf_app) as s:
        dead = leases.claim(s, SyncItem, ready=sync.ready(now), order_by=SyncItem.id, now=now,
                            lease=sync.LEASE, limit=10, values={"status": SyncStatus.CLAIMED})
    assert len(dead) == 2
    assert sync.run(sf_app, now + timedelta(seconds=30)).claimed == 0
    assert sync.run(sf_app, now + sync.LEASE).done == 2
    assert len(fake_sf.tasks()) == 2
    with session_scope(sf_app) as s:  # the dead worker wakes up: its writes change nothing
        assert not leases.release(s, SyncItem, dead[0], now=now + timedelta(seconds=1),
                                  values={"status": SyncStatus.FAILED})
    assert {i.status for i in items(session)} == {SyncStatus.DONE}


def test_request_limit_pauses_the_org_and_nothing_is_lost(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Does REQUEST_LIMIT_EXCEEDED show "API limit reached", pause, then resume?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.fail("query", Failure(403, "REQUEST_LIMIT_EXCEEDED"))
    assert sync.run(sf_app, now).retried == 1
    conn = connection(session, org.id)
    assert conn.status is ConnectionStatus.API_LIMIT
    assert "REQUEST_LIMIT_EXCEEDED" in (conn.status_reason or "")
    assert conn.paused_until == now + timedelta(minutes=30)
    assert sync.run(sf_app, now + timedelta(minutes=10)).claimed == 0
    assert sync.run(sf_app, now + timedelta(minutes=30)).done == 1
    assert connection(session, org.id).status is ConnectionStatus.CONNECTED
    assert len(fake_sf.tasks()) == 1


def test_expired_session_refreshes_once(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """After INVALID_SESSION_ID, is the token refreshed and the call made again?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    before = connection(session, org.id).access_token
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.expire_tokens()
    assert sync.run(sf_app, now).done == 1
    assert connection(session, org.id).access_token != before
    assert ("POST", "/services/oauth2/token") in fake_sf.state.calls
    assert len(fake_sf.tasks()) == 1


def test_failed_refresh_needs_reauth_and_keeps_the_items(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """When the refresh is refused, is the org "needs re-auth" with its items waiting?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.expire_tokens()
    fake_sf.state.refresh_works = False
    sync.run(sf_app, now)
    conn = connection(session, org.id)
    assert conn.status is ConnectionStatus.NEEDS_REAUTH
    assert "invalid_grant" in (conn.status_reason or "")
    assert [i.status for i in items(session)] == [SyncStatus.PENDING]
    assert sync.run(sf_app, now + timedelta(hours=1)).claimed == 0
    connect(sf_app, fake_sf, org.id, now + timedelta(hours=2))  # the admin connects again
    assert sync.run(sf_app, now + timedelta(hours=2)).done == 1
    assert len(fake_sf.tasks()) == 1


def test_salesforce_unreachable_loses_nothing(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """With Salesforce down, do items wait, and all sync once it is back?"""
    org, rep, contacts, campaign = _world(session, fake_sf, emails=("a@x.test", "b@x.test"))
    connect(sf_app, fake_sf, org.id, now)
    url = fake_sf.url
    with session_scope(sf_app) as s:
        conn = s.scalar(select(__import__("server.salesforce.models", fromlist=["x"])
                               .SalesforceConnection))
        conn.instance_url = "https://127.0.0.1:9"  # nothing listens there
    _launch(sf_app, rep.id, campaign.id, [c.id for c in contacts], now)
    result = sync.run(sf_app, now)
    assert result.retried == 2 and "unreachable" in result.errors[0]
    with session_scope(sf_app) as s:
        conn = s.scalar(select(__import__("server.salesforce.models", fromlist=["x"])
                               .SalesforceConnection))
        conn.instance_url = url
    assert sync.run(sf_app, now + timedelta(minutes=5)).done == 2
    assert len(fake_sf.tasks()) == 2


def test_completion_syncs_and_skipping_does_not(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Completing a task sets Status Completed; a skipped one stays Not Started?"""
    org, rep, contacts, campaign = _world(session, fake_sf, emails=("a@x.test", "b@x.test"))
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [c.id for c in contacts], now)
    sync.run(sf_app, now)
    first, second = session.scalars(select(Task).order_by(Task.id)).all()
    complete_task(session, rep, first.id, now=now)
    skip_task(session, rep, second.id, now=now)
    session.commit()
    sync.run(sf_app, now)
    by_key = {t["CallObject"]: t for t in fake_sf.tasks()}
    assert by_key[f"relay:task-{first.id}"]["Status"] == "Completed"
    assert by_key[f"relay:task-{second.id}"]["Status"] == "Not Started"


def test_completion_before_the_task_synced_waits_for_it(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Completed before its Task reached Salesforce: created, then completed, once?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    task = session.scalars(select(Task)).one()
    complete_task(session, rep, task.id, now=now)
    session.commit()
    sync.run(sf_app, now)
    [sf_task] = [t for t in fake_sf.tasks() if t["CallObject"] == f"relay:task-{task.id}"]
    assert sf_task["Status"] == "Completed"


def test_completed_in_salesforce_completes_in_relay(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Does a Task completed in Salesforce complete the Relay task, and only Completed?"""
    org, rep, contacts, campaign = _world(session, fake_sf, emails=("a@x.test", "b@x.test"))
    connect(sf_app, fake_sf, org.id, now)
    fake_sf.state.clock = now
    _launch(sf_app, rep.id, campaign.id, [c.id for c in contacts], now)
    sync.run(sf_app, now)
    first, second = session.scalars(select(Task).order_by(Task.id)).all()
    ids = {i.task_id: i.sf_id for i in items(session)}
    fake_sf.state.clock = now + timedelta(minutes=1)
    fake_sf.complete(ids[first.id])
    fake_sf.complete(ids[second.id], status="In Progress")
    later = now + timedelta(minutes=2)
    result = sync.run(sf_app, later)
    assert result.completed_back == 1
    session.commit()
    session.expire_all()
    assert session.get(Task, first.id).status is TaskStatus.DONE
    assert session.get(Task, first.id).via is CompletedVia.SALESFORCE
    assert session.get(Task, second.id).status is TaskStatus.OPEN
    conn = connection(session, org.id)
    assert conn.modstamp_cursor is not None and conn.modstamp_cursor > now
    # No completion is echoed back, and polling again changes nothing.
    assert not [i for i in items(session) if i.kind is SyncKind.COMPLETE]
    assert sync.run(sf_app, later + timedelta(minutes=5)).completed_back == 0
    # The next step (the email task of day 2) is now the person's active task.
    assert session.scalars(select(Task).where(Task.enrollment_id == first.enrollment_id,
                                              Task.type == StepType.EMAIL)).one()


def test_automatic_email_sent_becomes_a_completed_email_task(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is an automatic email that was sent logged as a completed Task of Type Email?"""
    org = make_org(session)
    rep = make_user(session, org, "rep@a.test", timezone="Europe/Paris")
    contact = make_contact(session, rep, "ann@x.test")
    template = make_template(session, rep)
    campaign = make_campaign(session, rep, [
        email_step(1, SendOption.AT_TIME, template, send_time=time(9, 0)),
        task_step(3)], name="Spring")
    session.commit()
    fake_sf.add("Contact", Email="ann@x.test", LastName="A")
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contact.id], now)
    with session_scope(sf_app) as s:
        send = s.scalars(select(ScheduledSend)).one()
        send.subject = "Hello Ann"
        send.text = "Hi Ann,\n\n\n\nWould you have ten minutes?" + " More." * 400
        send.status = SendStatus.SENT
        send.sent_at = now
        s.flush()
        assert send_finished(s, send.id, now)
        send_id = send.id
    assert enqueue.email_sent(session, session.get(ScheduledSend, send_id), now) == 0
    session.commit()
    sync.run(sf_app, now)
    [email] = [t for t in fake_sf.tasks() if t.get("Type") == "Email"]
    assert email["Subject"] == "Email: Hello Ann"
    assert email["Status"] == "Completed"
    assert email["ActivityDate"] == "2026-11-24"
    assert email["Description"].startswith("Hi Ann,\n\nWould you have ten minutes? More.")
    assert len(email["Description"]) == 1000 and email["Description"].endswith("…")


def test_email_task_sent_by_the_rep_completes_its_own_task_as_an_email(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Does sending an email task turn its synced Task into the email activity (no second)?"""
    org, rep, contacts, campaign = _world(session, fake_sf, steps=None)
    template = make_template(session, rep, "Solo")
    campaign = make_campaign(session, rep, [email_step(1, SendOption.TASK, template)],
                             name="Email only")
    session.commit()
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    sync.run(sf_app, now)
    task = session.scalars(select(Task)).one()
    complete_task(session, rep, task.id, now=now, sent_at=now, message_id="<m1@x>",
                  via=CompletedVia.GMAIL)
    session.commit()
    assert [i.kind for i in items(session)] == [SyncKind.TASK, SyncKind.EMAIL]
    sync.run(sf_app, now)
    [sf_task] = fake_sf.tasks()
    assert (sf_task["Status"], sf_task["Type"]) == ("Completed", "Email")
    assert sf_task["Subject"] == f"Email: {task.title}"


def test_reply_detected_is_logged_once(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is a detected reply a completed "Reply: <subject>" Task, once per message?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    for _ in range(2):
        enqueue.reply_detected(session, org_id=org.id, owner_id=rep.id,
                               contact_id=contacts[0].id, subject="Re: Hello\r\nAnn",
                               message_id="<reply-1@x.test>", received_at=now, now=now,
                               body_text="Sure, Tuesday works.")
    session.commit()
    assert len(items(session)) == 1
    sync.run(sf_app, now)
    [reply] = fake_sf.tasks()
    assert reply["Subject"] == "Reply: Re: Hello Ann"
    assert (reply["Status"], reply["Type"], reply["Description"]) == (
        "Completed", "Email", "Sure, Tuesday works.")


def test_rejected_record_fails_with_its_reason(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is a 400 from Salesforce a failed item naming Salesforce's error?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.fail("create", Failure(400, "FIELD_CUSTOM_VALIDATION_EXCEPTION"))
    assert sync.run(sf_app, now).failed == 1
    [item] = items(session)
    assert item.status is SyncStatus.FAILED
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in (item.reason or "")


def test_task_skipped_before_it_synced_is_not_created(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Is a task skipped before the worker reached it left out of Salesforce?"""
    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    task = session.scalars(select(Task)).one()
    skip_task(session, rep, task.id, now=now)
    session.commit()
    sync.process(sf_app, now)
    first = items(session)[0]
    assert (first.task_id, first.status, first.reason) == (
        task.id, SyncStatus.SKIPPED, "the task was skipped before it synced")
    assert all(t["CallObject"] != f"relay:task-{task.id}" for t in fake_sf.tasks())


def test_bulk_launch_queues_with_one_statement(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """Does launching many people queue their Salesforce Tasks in one INSERT, not a loop?"""
    from sqlalchemy import event

    emails = tuple(f"p{i}@x.test" for i in range(40))
    org, rep, contacts, campaign = _world(session, fake_sf, emails=emails, in_salesforce=False)
    connect(sf_app, fake_sf, org.id, now)
    statements: list[str] = []
    engine = sf_app.extensions["relay.engine"]

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "salesforce_sync" in statement and statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        _launch(sf_app, rep.id, campaign.id, [c.id for c in contacts], now)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(statements) == 1 and "SELECT" in statements[0].upper()
    assert len(items(session)) == 40


def test_a_slow_pass_does_not_start_an_item_whose_lease_ran_out(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime):
    """After a pass has spent longer than the lease, is a re-claimed item left to its owner?"""
    import time as clock

    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now)
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    with session_scope(sf_app) as s:
        [mine] = leases.claim(s, SyncItem, ready=sync.ready(now), order_by=SyncItem.id,
                              now=now, lease=sync.LEASE, limit=1,
                              values={"status": SyncStatus.CLAIMED})
    # Early in the pass the lease is renewed for a whole lease ahead.
    assert sync._renew(sf_app, mine, now, sync.LEASE, clock.monotonic())
    later = now + 2 * sync.LEASE
    with session_scope(sf_app) as s:
        [theirs] = leases.claim(s, SyncItem, ready=sync.ready(later), order_by=SyncItem.id,
                                now=later, lease=sync.LEASE, limit=1,
                                values={"status": SyncStatus.CLAIMED})
    # A pass that started at `now` and has run for 2.5 leases must not touch it.
    spent = clock.monotonic() - 2.5 * sync.LEASE.total_seconds()
    assert not sync._renew(sf_app, mine, now, sync.LEASE, spent)
    assert sync._renew(sf_app, theirs, later, sync.LEASE, clock.monotonic())


def test_unreadable_jwt_key_needs_reauth_and_keeps_items(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, now: datetime, tmp_path):
    """When a JWT session expires and the key file is gone, is the org "needs re-auth"?"""
    from server.salesforce.models import AuthKind, SalesforceConnection

    org, rep, contacts, campaign = _world(session, fake_sf)
    connect(sf_app, fake_sf, org.id, now, with_refresh=False)
    with session_scope(sf_app) as s:
        conn = s.scalar(select(SalesforceConnection))
        conn.auth_kind, conn.username = AuthKind.JWT, "integration@acme.test"
    sf_app.config["SALESFORCE_JWT_KEY_FILE"] = str(tmp_path / "missing.key")
    _launch(sf_app, rep.id, campaign.id, [contacts[0].id], now)
    fake_sf.expire_tokens()
    assert sync.run(sf_app, now).retried == 1
    conn = connection(session, org.id)
    assert conn.status is ConnectionStatus.NEEDS_REAUTH
    assert "cannot read SALESFORCE_JWT_KEY_FILE" in (conn.status_reason or "")
    assert [i.status for i in items(session)] == [SyncStatus.PENDING]
