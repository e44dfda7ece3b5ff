"""The mailbox sync end to end: Gmail history and Graph delta, recorded messages, the database."""

from __future__ import annotations

import base64
import json
import threading
import time as real_time
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta

import pytest
import requests
from cryptography.fernet import Fernet
from googleapiclient.discovery import build
from googleapiclient.http import HttpMockSequence
from sqlalchemy import select

from server import db
from server.app import create_app
from server.campaigns.launch import launch
from server.campaigns.models import Enrollment, EnrollmentStatus, OnBounce, OnReply
from server.campaigns.progress import send_finished
from server.campaigns.spec import SendOption
from server.contacts.models import Contact
from server.crypto import KeyRing
from server.feed.models import EventKind, FeedEvent
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import MailboxStatus, MailMatch, MatchKind, Provider
from server.mailboxes.sync import SyncResult, sync_backoff, sync_mailbox, sync_mailboxes
from server.sending.models import ScheduledSend, SendStatus
from server.sending.providers.gmail import GmailTransport
from server.sending.providers.graph import GraphTransport
from server.sending.transport import ReauthRequired, TransientError
from server.tasks.models import CompletedVia, Task, TaskStatus
from tests.conftest import (
    PG_URL,
    email_step,
    make_campaign,
    make_contact,
    make_template,
    make_user,
)
from tests.fake_graph import fake_graph
from tests.mailboxes.test_detect import OUR_ID, load

RING = KeyRing.parse(f"k1:{Fernet.generate_key().decode()}")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ok(body):
    return ({"status": "200"}, json.dumps(body))


def gmail(responses):
    http = HttpMockSequence(responses)
    return GmailTransport(build("gmail", "v1", http=http, static_discovery=True)), http


def raw_of(name, task_id=0):
    return base64.urlsafe_b64encode(load(name, task_id)).decode()


def mailbox(session, world, provider=Provider.GOOGLE):
    mb = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id, provider=provider,
                     email="rep@a.test", display_name="Rita", settings={},
                     secret={"refresh_token": "r"}, keyring=RING, now=NOW)
    session.commit()
    return mb


def pat(session, world):
    """The rep's contact Pat (pat@client.test), made once."""
    found = session.scalar(select(Contact).where(Contact.owner_id == world.rep.id,
                                                 Contact.email == "pat@client.test"))
    return found or make_contact(session, world.rep, "pat@client.test", first_name="Pat")


def task_campaign(session, world, now):
    """Pat has an open email task ("Hello Pat"), created before the hand-sent email."""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl),
                                                  email_step(3, SendOption.TASK, tpl)])
    contact = pat(session, world)
    ((eid, _),) = launch(session, world.rep, campaign, [contact.id], now=now).enrolled
    task = session.scalar(select(Task).where(Task.enrollment_id == eid))
    task.created_at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    session.commit()
    return eid, task


def sent_campaign(session, world, now, **settings):
    """Pat got an automatic campaign email with our Message-ID in thread ``thread-1``."""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep,
                             [email_step(1, SendOption.AT_TIME, tpl, send_time=time(9, 0)),
                              email_step(3, SendOption.AT_TIME, tpl, send_time=time(9, 0))],
                             **settings)
    contact = pat(session, world)
    ((eid, _),) = launch(session, world.rep, campaign, [contact.id], now=now).enrolled
    send = session.scalar(select(ScheduledSend).where(ScheduledSend.enrollment_id == eid))
    send.status, send.sent_at = SendStatus.SENT, datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    send.message_id, send.thread_id, send.subject = OUR_ID, "thread-1", "Hello Pat"
    session.flush()
    assert send_finished(session, send.id, send.sent_at)
    session.commit()
    return eid


def history_responses(*messages, history_id="200", task_id=0):
    """history.list naming each message, then messages.get of each (raw, labels)."""
    added = [{"message": {"id": mid}} for mid, *_ in messages]
    out = [ok({"history": [{"id": "150", "messagesAdded": added}], "historyId": history_id})]
    for mid, name, labels, thread in messages:
        out.append(ok({"id": mid, "threadId": thread, "labelIds": labels,
                       "raw": raw_of(name, task_id)}))
    return out


def test_first_gmail_sync_only_records_where_the_mailbox_is(session, world, now):
    """Does a first sync store the current history id and replay nothing?"""
    mb = mailbox(session, world)
    t, http = gmail([ok({"emailAddress": "rep@a.test", "historyId": "12345"})])
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert mbx.get_cursor(session, mb.id, "history") == "12345"
    assert http.request_sequence[0][0].endswith("/users/me/profile?alt=json")
    assert result.messages == 0


def test_task_sent_by_hand_in_gmail_completes_with_the_real_time(session, world, now):
    """Is the task completed at the email's Date, via Gmail, and the match's rule kept?"""
    eid, task = task_campaign(session, world, now)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, http = gmail(history_responses(("m1", "sent_gmail_by_hand.eml", ["SENT"], "t-77")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.sent == 1
    session.refresh(task)
    assert task.status is TaskStatus.DONE and task.via is CompletedVia.GMAIL
    assert task.sent_at == datetime(2026, 11, 24, 14, 47, 12, tzinfo=UTC)
    assert task.message_id == "<CAF4ZpR9xk2=kq7cWnU0sZ3hVd1pA@mail.gmail.com>"
    match = session.scalar(select(MailMatch))
    assert (match.kind, match.matched_by, match.task_id, match.thread_id) == (
        MatchKind.SENT, "recipient+subject", task.id, "t-77")
    assert mbx.get_cursor(session, mb.id, "history") == "200"
    # The campaign moved on: the second email task exists now.
    assert session.scalar(select(Task).where(Task.enrollment_id == eid,
                                             Task.status == TaskStatus.OPEN)) is not None
    # The same history again (a crash before the cursor was saved) changes nothing.
    t, _ = gmail(history_responses(("m1", "sent_gmail_by_hand.eml", ["SENT"], "t-77")))
    again = SyncResult()
    sync_mailbox(session, mb, t, NOW, again)
    session.commit()
    assert again.messages == 1 and again.sent == 0
    assert len(session.scalars(select(MailMatch)).all()) == 1


def test_outlook_header_match_completes_via_outlook(session, world, now):
    """Does an Outlook-sent email with X-Relay-Task complete the task via Outlook (Graph)?"""
    eid, task = task_campaign(session, world, now)
    mb = mailbox(session, world, Provider.MICROSOFT)
    with fake_graph() as (base, state), requests.Session() as http:
        state.mime["s1"] = load("sent_outlook_header.eml", task.id)
        sent_delta = f"{base}/me/mailFolders/sentitems/messages/delta"
        state.delta_pages["sentitems"] = [
            {"value": [], "@odata.deltaLink": f"{sent_delta}?page=1"},
            {"value": [{"id": "s1", "conversationId": "conv-9", "isDraft": False},
                       {"id": "d1", "isDraft": True}],
             "@odata.deltaLink": f"{sent_delta}?page=2"},
        ]
        state.delta_pages["inbox"] = [
            {"value": [], "@odata.deltaLink": f"{base}/me/mailFolders/inbox/messages/delta?page=0"}]
        t = GraphTransport(lambda: "at", base_url=base, session=http, timeout=5)
        sync_mailbox(session, mb, t, NOW, SyncResult())  # first pass: cursors only
        session.commit()
        first = state.requests[0]
        assert first.query["$filter"] == ["receivedDateTime ge 2026-11-25T11:55:00Z"]
        assert mbx.get_cursor(session, mb.id, "sentitems").endswith("page=1")
        result = SyncResult()
        sync_mailbox(session, mb, t, NOW, result)
        session.commit()
    assert result.sent == 1
    session.refresh(task)
    assert task.status is TaskStatus.DONE and task.via is CompletedVia.OUTLOOK
    assert task.sent_at == datetime(2026, 11, 24, 9, 12, 3, tzinfo=UTC)
    match = session.scalar(select(MailMatch))
    assert (match.matched_by, match.thread_id) == ("x-relay-task", "conv-9")
    assert mbx.get_cursor(session, mb.id, "sentitems").endswith("page=2")


def test_an_email_tagged_with_the_tasks_opaque_tag_completes_it(session, world, now):
    """Does a sent email whose X-Relay-Task is the task's tag match it by header?"""
    from server.tasks.tags import tag_for_task

    eid, task = task_campaign(session, world, now)
    tag = tag_for_task(session, task.id)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    raw = load("sent_outlook_header.eml", task.id).replace(
        f"X-Relay-Task: {task.id}".encode(), f"X-Relay-Task: {tag}".encode())
    assert tag.encode() in raw
    t, _ = gmail([ok({"history": [{"id": "150", "messagesAdded": [{"message": {"id": "s1"}}]}],
                      "historyId": "200"}),
                  ok({"id": "s1", "threadId": "t-9", "labelIds": ["SENT"],
                      "raw": base64.urlsafe_b64encode(raw).decode()})])
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.sent == 1
    match = session.scalar(select(MailMatch))
    assert (match.matched_by, match.task_id) == ("x-relay-task", task.id)


@pytest.mark.parametrize("on_reply,status", [(OnReply.END, EnrollmentStatus.REPLIED),
                                             (OnReply.END_SUCCESS, EnrollmentStatus.REPLIED),
                                             (OnReply.CONTINUE, EnrollmentStatus.ACTIVE)])
def test_reply_applies_on_reply(session, world, now, on_reply, status):
    """Does a reply to a campaign email apply on_reply, and record why it matched?"""
    eid = sent_campaign(session, world, now, on_reply=on_reply)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, _ = gmail(history_responses(("r1", "reply_in_reply_to.eml", ["INBOX"], "thread-1")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.replies == 1
    enrollment = session.get(Enrollment, eid, populate_existing=True)
    assert enrollment.status is status
    event = session.scalar(select(FeedEvent).where(FeedEvent.kind == EventKind.REPLY_RECEIVED))
    assert event.data["matched_by"] == "in-reply-to"
    assert event.data["on_reply"] == on_reply.value
    if on_reply is not OnReply.CONTINUE:
        pending = session.scalars(select(ScheduledSend).where(
            ScheduledSend.enrollment_id == eid, ScheduledSend.status == SendStatus.SCHEDULED
        )).all()
        assert pending == []


def test_automatic_replies_change_nothing(session, world, now):
    """Do out-of-office answers leave the person in the campaign?"""
    eid = sent_campaign(session, world, now)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, _ = gmail(history_responses(("a1", "ooo_auto_submitted.eml", ["INBOX"], "thread-1"),
                                   ("a2", "ooo_german_subject.eml", ["INBOX"], "thread-1"),
                                   ("a3", "dsn_delayed.eml", ["INBOX"], "x")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert (result.replies, result.bounces, result.auto_replies) == (0, 0, 2)
    assert session.get(Enrollment, eid, populate_existing=True).status is (
        EnrollmentStatus.ACTIVE)


@pytest.mark.parametrize("fixture,rule", [("bounce_dsn_gmail.eml", "dsn-message-id"),
                                          ("bounce_plain_exim.eml", "dsn-recipient")])
@pytest.mark.parametrize("on_bounce", [OnBounce.REMOVE, OnBounce.CONTINUE])
def test_bounce_applies_on_bounce(session, world, now, fixture, rule, on_bounce):
    """Does a DSN about a campaign email apply on_bounce, with the rule that matched?"""
    eid = sent_campaign(session, world, now, on_bounce=on_bounce)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, _ = gmail(history_responses(("b1", fixture, ["INBOX"], "other-thread")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.bounces == 1 and result.replies == 0
    enrollment = session.get(Enrollment, eid, populate_existing=True)
    expected = EnrollmentStatus.BOUNCED if on_bounce is OnBounce.REMOVE else (
        EnrollmentStatus.ACTIVE)
    assert enrollment.status is expected
    if on_bounce is OnBounce.REMOVE:
        assert "5.1.1" in enrollment.end_reason
    event = session.scalar(select(FeedEvent).where(FeedEvent.kind == EventKind.BOUNCE_RECEIVED))
    assert event.data["matched_by"] == rule


class Resolver:
    """Hands the sync a prepared transport (or raises), like MailboxResolver.build."""

    def __init__(self, transport=None, error=None):
        self.transport, self.error = transport, error

    def build(self, mb):
        if self.error:
            raise self.error
        return self.transport


def test_sync_mailboxes_pass_marks_refused_credentials_and_paces_itself(app, session, world):
    """Does the worker's pass mark invalid_grant as needs_reauth and wait MAIL_SYNC_SECONDS?"""
    mb = mailbox(session, world)
    t, _ = gmail([ok({"historyId": "5"})])
    result = sync_mailboxes(app, NOW, resolver=Resolver(t))
    assert result.mailboxes == 1 and not result.errors
    again = sync_mailboxes(app, NOW + timedelta(seconds=59),
                           resolver=Resolver(error=AssertionError("not due")))
    assert again == SyncResult()
    refused = sync_mailboxes(app, NOW + timedelta(seconds=60),
                             resolver=Resolver(error=ReauthRequired("invalid_grant")))
    assert refused.errors == [f"mailbox {mb.id}: invalid_grant"]
    session.rollback()
    assert session.get(mbx.Mailbox, mb.id, populate_existing=True).status is (
        MailboxStatus.NEEDS_REAUTH)
    assert sync_mailboxes(app, NOW + timedelta(hours=1), resolver=Resolver(t)) == SyncResult()


class CountingGmail:
    """Stands in for a Gmail transport in the sync: records each call, may fail or dawdle."""

    def __init__(self, log, mailbox_id, error=None, delay=0.0):
        self.log, self.mailbox_id, self.error, self.delay = log, mailbox_id, error, delay

    def _call(self, what):
        self.log.append((self.mailbox_id, what, threading.current_thread().name))
        if self.delay:
            real_time.sleep(self.delay)  # only to let two workers overlap; no clock is read
        if self.error is not None:
            raise self.error

    def profile_history_id(self):
        self._call("profile")
        return "5"

    def history(self, cursor):
        self._call("history")
        return []


class CountingResolver:
    """One CountingGmail per mailbox, all writing to one shared call log."""

    def __init__(self, error=None, delay=0.0):
        self.log, self.error, self.delay = [], error, delay

    def build(self, mb):
        return CountingGmail(self.log, mb.id, self.error, self.delay)


@contextmanager
def worker_app(database_url, **config):
    """A separate app on the same database: another worker process, or one restarted."""
    other = create_app({"TESTING": True, "DATABASE_URL": database_url,
                        "SECRET_KEY": "test-secret", **config})
    try:
        yield other
    finally:
        db.dispose(other)


def sync_state(session, mailbox_id):
    state = session.get(mbx.MailboxSync, mailbox_id, populate_existing=True)
    session.commit()
    return state


def test_a_restarted_worker_does_not_sync_again_before_the_period(database_url, session, world):
    """Is the cadence in the database: a fresh app at the same moment syncs nothing?"""
    mb = mailbox(session, world)
    resolver = CountingResolver()
    with worker_app(database_url, MAIL_SYNC_SECONDS=60.0) as first:
        assert sync_mailboxes(first, NOW, resolver=resolver).mailboxes == 1
    assert [what for _, what, _ in resolver.log] == ["profile"]
    state = sync_state(session, mb.id)
    assert (state.next_sync_at, state.last_synced_at, state.failures) == (
        NOW + timedelta(seconds=60), NOW, 0)
    assert state.lease_token is None
    for moment in (NOW, NOW + timedelta(seconds=59)):
        with worker_app(database_url, MAIL_SYNC_SECONDS=60.0) as restarted:
            assert sync_mailboxes(restarted, moment, resolver=resolver) == SyncResult()
    assert len(resolver.log) == 1
    with worker_app(database_url, MAIL_SYNC_SECONDS=60.0) as restarted:
        assert sync_mailboxes(restarted, NOW + timedelta(seconds=60),
                              resolver=resolver).mailboxes == 1
    assert [what for _, what, _ in resolver.log] == ["profile", "history"]
    assert sync_state(session, mb.id).next_sync_at == NOW + timedelta(seconds=120)


def test_a_failing_mailbox_is_retried_after_a_growing_backoff(app, session, world):
    """Is a failed sync recorded and tried again only after 2, then 4 periods, then reset?"""
    mb = mailbox(session, world)
    failing = CountingResolver(error=TransientError("Gmail 503 backend error"))
    result = sync_mailboxes(app, NOW, resolver=failing)
    assert result.errors == [f"mailbox {mb.id}: Gmail 503 backend error"]
    state = sync_state(session, mb.id)
    assert (state.failures, state.next_sync_at) == (1, NOW + timedelta(seconds=120))
    assert state.last_error == "Gmail 503 backend error" and state.lease_token is None
    for seconds in (0, 60, 119):  # not hammered on every pass
        assert sync_mailboxes(app, NOW + timedelta(seconds=seconds),
                              resolver=failing) == SyncResult()
    assert len(failing.log) == 1
    sync_mailboxes(app, NOW + timedelta(seconds=120), resolver=failing)
    state = sync_state(session, mb.id)
    assert (state.failures, state.next_sync_at) == (2, NOW + timedelta(seconds=120 + 240))
    assert sync_mailboxes(app, NOW + timedelta(seconds=359), resolver=failing) == SyncResult()
    assert len(failing.log) == 2
    working = CountingResolver()
    assert sync_mailboxes(app, NOW + timedelta(seconds=360), resolver=working).mailboxes == 1
    state = sync_state(session, mb.id)
    assert (state.failures, state.last_error) == (0, None)
    assert state.next_sync_at == NOW + timedelta(seconds=420)


def test_sync_backoff_doubles_from_the_period_up_to_an_hour():
    """Does the wait double per failure from MAIL_SYNC_SECONDS, capped at an hour?"""
    assert [sync_backoff(60, n).total_seconds() for n in range(1, 8)] == [
        120, 240, 480, 960, 1920, 3600, 3600]
    assert sync_backoff(7200, 3) == timedelta(hours=2)  # never less than one period
    assert sync_backoff(60, 10_000) == timedelta(hours=1)


def test_a_reconnect_clears_the_sync_backoff(app, session, world):
    """After new credentials, is the mailbox synced at the next pass (no backoff left)?"""
    mb = mailbox(session, world)
    sync_mailboxes(app, NOW, resolver=CountingResolver(error=TransientError("down")))
    assert sync_state(session, mb.id).failures == 1
    mailbox(session, world)  # the rep connects it again
    assert sync_mailboxes(app, NOW + timedelta(seconds=1),
                          resolver=CountingResolver()).mailboxes == 1


def test_a_worker_that_lost_its_mailbox_applies_nothing(app, session, world, now):
    """A worker stalled past its lease: is its late batch dropped, the new holder's kept?"""
    from server.mailboxes.sync import (
        SYNC_LEASE,
        _sync_claimed,
        claim_due_mailboxes,
        ensure_sync_rows,
    )

    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    writes = app.extensions["relay.write_sessionmaker"]
    with writes() as s:
        ensure_sync_rows(s)
        [stalled] = claim_due_mailboxes(s, NOW, 60.0)
        s.commit()
    later = NOW + SYNC_LEASE
    t, _ = gmail([ok({"history": [], "historyId": "300"})])
    assert sync_mailboxes(app, later, resolver=Resolver(t)).mailboxes == 1
    assert mbx.get_cursor(session, mb.id, "history") == "300"
    session.commit()
    late, _ = gmail([ok({"history": [], "historyId": "200"})])
    result = SyncResult()
    _sync_claimed(app, stalled, NOW, 60.0, Resolver(late), result)
    assert result == SyncResult()
    assert mbx.get_cursor(session, mb.id, "history") == "300"
    session.commit()
    assert sync_state(session, mb.id).next_sync_at == later + timedelta(seconds=60)


@pytest.mark.skipif(not PG_URL, reason="several workers need PostgreSQL (SQLite runs one)")
def test_two_workers_sync_each_mailbox_once(database_url, session, world):
    """With two workers passing at the same moment, is each mailbox synced exactly once?"""
    owners = [world.rep, world.rep2, world.admin] + [
        make_user(session, world.org, f"sync{i}@a.test") for i in range(21)]
    for owner in owners:
        mbx.connect(session, org_id=world.org.id, owner_id=owner.id, provider=Provider.GOOGLE,
                    email=owner.email, display_name="", settings={},
                    secret={"refresh_token": "r"}, keyring=RING, now=NOW)
    session.commit()
    # Each sync takes 0.2 s, so one worker alone would need 4 s before its third claim: the
    # other, started at the same moment, certainly claims some in between.
    resolver = CountingResolver(delay=0.2)
    start = threading.Barrier(2)
    results, failures = {}, []

    def work(name):
        try:
            with worker_app(database_url, MAIL_SYNC_SECONDS=60.0) as other:
                start.wait(timeout=30)
                results[name] = sync_mailboxes(other, NOW, resolver=resolver)
        except Exception as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,), name=n) for n in ("w1", "w2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and set(results) == {"w1", "w2"}
    synced = sorted(mailbox_id for mailbox_id, _, _ in resolver.log)
    assert len(synced) == len(owners) and len(set(synced)) == len(owners)
    assert sum(r.mailboxes for r in results.values()) == len(owners)
    assert {thread for _, _, thread in resolver.log} == {"w1", "w2"}
    # Both again, a moment later: nothing is due for either.
    with worker_app(database_url) as a, worker_app(database_url) as b:
        assert sync_mailboxes(a, NOW + timedelta(seconds=30), resolver=resolver) == SyncResult()
        assert sync_mailboxes(b, NOW + timedelta(seconds=30), resolver=resolver) == SyncResult()
    assert len(resolver.log) == len(owners)


def test_follow_up_prefill_threads_after_an_automatic_email(app, session, world, now):
    """Does a follow-up task thread after an automatic Gmail email (its Message-ID, thread)?"""
    from tests.compose.test_prefill import follow_up_campaign, get

    campaign, _, _ = follow_up_campaign(session, world.rep, first_option=SendOption.AT_TIME)
    contact = pat(session, world)
    ((eid, _),) = launch(session, world.rep, campaign, [contact.id], now=now).enrolled
    send = session.scalar(select(ScheduledSend).where(ScheduledSend.enrollment_id == eid))
    send.status, send.sent_at = SendStatus.SENT, datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    send.message_id, send.thread_id = OUR_ID, "18c0ffee"
    session.flush()
    assert send_finished(session, send.id, send.sent_at)
    mailbox(session, world)
    follow = session.scalar(select(Task).where(Task.enrollment_id == eid))
    doc = get(app.test_client(), world, world.rep, follow.id).json
    assert doc["follow_up"]["in_reply_to"] == OUR_ID
    assert doc["follow_up"]["thread"] == {"gmail_thread_id": "18c0ffee",
                                          "outlook_conversation_id": None}


def test_follow_up_prefill_threads_after_a_hand_sent_outlook_email(app, session, world, now):
    """Does a follow-up thread after a hand-sent Outlook email the sync found (E3)?"""
    from tests.compose.test_prefill import follow_up_campaign, get

    campaign, _, _ = follow_up_campaign(session, world.rep, first_subject="Quick question")
    contact = pat(session, world)
    ((eid, _),) = launch(session, world.rep, campaign, [contact.id], now=now).enrolled
    first = session.scalar(select(Task).where(Task.enrollment_id == eid))
    first.created_at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    mb = mailbox(session, world, Provider.MICROSOFT)
    with fake_graph() as (base, state), requests.Session() as http:
        state.mime["s1"] = load("sent_outlook_header.eml", first.id)
        delta = f"{base}/me/mailFolders/sentitems/messages/delta"
        state.delta_pages["sentitems"] = [
            {"value": [{"id": "s1", "conversationId": "AAQkConv=", "isDraft": False}],
             "@odata.deltaLink": f"{delta}?page=0"}]
        mbx.set_cursor(session, mb.id, "sentitems", f"{delta}?page=0", NOW)
        mbx.set_cursor(session, mb.id, "inbox", f"{base}/me/mailFolders/inbox/messages/delta",
                       NOW)
        session.commit()
        t = GraphTransport(lambda: "at", base_url=base, session=http, timeout=5)
        result = SyncResult()
        sync_mailbox(session, mb, t, NOW, result)
        session.commit()
    assert result.sent == 1
    follow = session.scalar(select(Task).where(Task.enrollment_id == eid,
                                               Task.status == TaskStatus.OPEN))
    doc = get(app.test_client(), world, world.rep, follow.id).json
    mid = "<DB9PR08MB67164A5E2C1D0F3B9E8A7C64D1592@DB9PR08MB6716.eurprd08.prod.outlook.com>"
    assert doc["follow_up"]["in_reply_to"] == mid
    assert doc["follow_up"]["thread"] == {"gmail_thread_id": None,
                                          "outlook_conversation_id": "AAQkConv="}


def test_a_message_the_campaign_cannot_take_does_not_stop_the_sync(session, world, now):
    """If the task's own email is being sent right now, is the message reported and skipped?"""
    eid, task = task_campaign(session, world, now)
    session.add(ScheduledSend(org_id=world.org.id, owner_id=world.rep.id, task_id=task.id,
                              contact_id=task.contact_id, status=SendStatus.SENDING,
                              due_at=NOW, to_email="pat@client.test", subject="Hello Pat"))
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, _ = gmail(history_responses(("m1", "sent_gmail_by_hand.eml", ["SENT"], "t1"),
                                   ("r1", "reply_subject_only.eml", ["INBOX"], "t2")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.messages == 2 and result.sent == 0
    assert "already being sent" in result.errors[0]
    assert mbx.get_cursor(session, mb.id, "history") == "200"
    session.refresh(task)
    assert task.status is TaskStatus.OPEN
    assert session.scalars(select(MailMatch)).all() == []


def test_a_message_deleted_since_the_history_is_skipped(session, world, now):
    """Does a message that is gone (404) by the time it is fetched not stall the sync?"""
    eid = sent_campaign(session, world, now)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    gone = ({"status": "404"}, json.dumps({"error": {"code": 404, "message": "Not Found",
                                                     "errors": [{"reason": "notFound"}]}}))
    t, _ = gmail([
        ok({"history": [{"id": "150", "messagesAdded": [{"message": {"id": "x"}},
                                                        {"message": {"id": "r1"}}]}],
            "historyId": "300"}),
        gone,
        ok({"id": "r1", "threadId": "thread-1", "labelIds": ["INBOX"],
            "raw": raw_of("reply_in_reply_to.eml")}),
    ])
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.replies == 1 and mbx.get_cursor(session, mb.id, "history") == "300"
    assert session.get(Enrollment, eid, populate_existing=True).status is (
        EnrollmentStatus.REPLIED)


def test_an_expired_graph_delta_link_restarts_from_now(session, world, now):
    """Does a 410 on a saved delta link restart the folder's cursor instead of stalling?"""
    mb = mailbox(session, world, Provider.MICROSOFT)
    with fake_graph() as (base, state), requests.Session() as http:
        delta = f"{base}/me/mailFolders/sentitems/messages/delta"
        mbx.set_cursor(session, mb.id, "sentitems", f"{delta}?page=0&old=1", NOW)
        mbx.set_cursor(session, mb.id, "inbox", f"{base}/me/mailFolders/inbox/messages/delta",
                       NOW)
        session.commit()
        state.script("GET", "/me/mailFolders/sentitems/messages/delta", (
            410, {"error": {"code": "SyncStateNotFound", "message": "resync required"}}, {}))
        state.delta_pages["sentitems"] = [{"value": [{"id": "old-mail"}],
                                           "@odata.deltaLink": f"{delta}?page=0&fresh=1"}]
        t = GraphTransport(lambda: "at", base_url=base, session=http, timeout=5)
        result = SyncResult()
        sync_mailbox(session, mb, t, NOW, result)
        session.commit()
        assert state.requests[1].query["$filter"] == ["receivedDateTime ge 2026-11-25T11:55:00Z"]
    assert result.messages == 0
    assert mbx.get_cursor(session, mb.id, "sentitems").endswith("fresh=1")


def test_a_detected_reply_queues_its_salesforce_activity(session, world, now):
    """Does a reply found by the sync queue its "Reply" activity for a syncing org, once?"""
    from server.salesforce.models import (
        ConnectionStatus,
        SalesforceConnection,
        SyncItem,
        SyncKind,
    )

    eid = sent_campaign(session, world, now, on_reply=OnReply.CONTINUE)
    session.add(SalesforceConnection(org_id=world.org.id, status=ConnectionStatus.CONNECTED))
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    for _ in range(2):  # the same history again (a replay) queues nothing more
        t, _ = gmail(history_responses(("r1", "reply_in_reply_to.eml", ["INBOX"], "thread-1")))
        sync_mailbox(session, mb, t, NOW, SyncResult())
        session.commit()
    [item] = session.scalars(select(SyncItem).where(SyncItem.kind == SyncKind.REPLY)).all()
    contact = pat(session, world)
    enrollment = session.get(Enrollment, eid)
    assert item.org_id == world.org.id
    assert item.payload["contact_id"] == contact.id
    assert item.payload["owner_id"] == world.rep.id
    assert item.payload["campaign_id"] == enrollment.campaign_id
    assert item.payload["subject"] == "Re: Hello Pat"
    assert item.payload["excerpt"].startswith("Thanks Rita, happy to talk on Thursday.")
    assert item.payload["at"] == "2026-11-25T07:03:41+00:00"


def test_a_detected_reply_queues_nothing_for_an_org_without_salesforce(session, world, now):
    """Does an org with no Salesforce connection get no sync item from a reply?"""
    from server.salesforce.models import SyncItem

    sent_campaign(session, world, now)
    mb = mailbox(session, world)
    mbx.set_cursor(session, mb.id, "history", "100", NOW)
    session.commit()
    t, _ = gmail(history_responses(("r1", "reply_in_reply_to.eml", ["INBOX"], "thread-1")))
    result = SyncResult()
    sync_mailbox(session, mb, t, NOW, result)
    session.commit()
    assert result.replies == 1
    assert session.scalars(select(SyncItem)).all() == []
