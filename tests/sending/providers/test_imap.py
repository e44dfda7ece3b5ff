"""SMTP mailboxes with IMAP: drafts, filing, reconciliation and sync against real sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from server.campaigns.models import Enrollment, EnrollmentStatus
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import MailMatch, Provider
from server.mailboxes.sync import SyncResult, sync_mailbox
from server.sending.providers.smtp import SmtpConfig, SmtpTransport
from server.sending.transport import Outcome, ReauthRequired
from server.tasks.models import CompletedVia, TaskStatus
from tests.fake_imap import fake_imap
from tests.mailboxes.test_detect import load
from tests.mailboxes.test_sync import RING, sent_campaign, task_campaign
from tests.sending.providers.test_smtp_local import Sink, authenticator, free_port, message

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def smtp_port():
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    yield port, sink
    ctl.stop()


def transport(smtp, imap, password="right-password"):
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=smtp, security="none", timeout=5,
                                    username="rita", password=password, imap_host="127.0.0.1",
                                    imap_port=imap, imap_security="none"),
                         clock=lambda: NOW)


def test_draft_send_files_in_sent_and_reconciles(smtp_port):
    """Is the draft APPENDed, sent, filed in Sent, removed from Drafts, and found again?

    Filing (the Sent copy, the draft removed) happens in after_sent, once `sent` is recorded.
    """
    port, sink = smtp_port
    with fake_imap() as (imap_port, state):
        t = transport(port, imap_port)
        msg = message(send_id=31)
        draft = t.create_draft(msg)
        drafts = state.folders["Drafts"].messages
        assert len(drafts) == 1 and "\\Draft" in next(iter(drafts.values()))[1]
        assert t.reconcile(msg, draft).outcome is Outcome.UNKNOWN
        t.send_draft(draft, msg)
        assert len(sink.received) == 1
        assert state.folders["Sent"].messages == {}  # filed once the send is recorded
        t.after_sent(msg)
        assert state.folders["Drafts"].messages == {}
        [(raw, flags)] = state.folders["Sent"].messages.values()
        assert msg.message_id.encode() in raw and "\\Seen" in flags
        rec = t.reconcile(msg, draft)
        assert rec.outcome is Outcome.SENT and rec.sent.provider_id == "imap:1"
        assert t.reconcile(message(send_id=32), None).outcome is Outcome.UNKNOWN
        assert "UID SEARCH" in state.commands and "EXPUNGE" in state.commands


def test_imap_login_refused_needs_reauth(smtp_port):
    """Is a refused IMAP login ReauthRequired (and never shown with the password)?"""
    port, _ = smtp_port
    with fake_imap() as (imap_port, _state), pytest.raises(ReauthRequired) as exc:
        transport(port, imap_port, password="nope-secret").reconcile(message(), None)
    assert "nope-secret" not in str(exc.value)


def test_imap_sync_detects_hand_sent_tasks_and_replies(session, world, now):
    """Do the Sent and INBOX folders feed sent and reply detection from UID cursors?"""
    eid_task, task = task_campaign(session, world, now)
    eid_reply = sent_campaign(session, world, now)
    mb = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                     provider=Provider.SMTP, email="rep@a.test", display_name="Rita",
                     settings={}, secret={"password": "right-password"}, keyring=RING, now=NOW)
    session.commit()
    with fake_imap() as (imap_port, state):
        state.folders["Sent"].add(b"Subject: old\r\n\r\nbefore the connection")
        t = transport(free_port(), imap_port)
        first = SyncResult()
        sync_mailbox(session, mb, t, NOW, first)
        session.commit()
        assert first.messages == 0
        assert state.commands.count("LOGIN") == 1  # both folders over one connection
        assert mbx.get_cursor(session, mb.id, "imap-sent") == "42:1"
        assert mbx.get_cursor(session, mb.id, "imap-inbox") == "42:0"
        state.folders["Sent"].add(load("sent_gmail_by_hand.eml"))
        state.folders["INBOX"].add(load("reply_in_reply_to.eml"))
        result = SyncResult()
        sync_mailbox(session, mb, t, NOW, result)
        session.commit()
        assert (result.sent, result.replies) == (1, 1)
        assert state.commands.count("LOGIN") == 2
        assert mbx.get_cursor(session, mb.id, "imap-sent") == "42:2"
        assert mbx.get_cursor(session, mb.id, "imap-inbox") == "42:1"
        again = SyncResult()  # nothing new: the n:* quirk returns the last UID, skipped
        sync_mailbox(session, mb, t, NOW, again)
        session.commit()
        assert again.messages == 0
    session.refresh(task)
    assert task.status is TaskStatus.DONE and task.via is CompletedVia.MANUAL
    assert session.get(Enrollment, eid_reply, populate_existing=True).status is (
        EnrollmentStatus.REPLIED)
    rules = sorted(m.matched_by for m in session.scalars(select(MailMatch)))
    assert rules == ["in-reply-to", "recipient+subject"]


def logins(state) -> int:
    return state.commands.count("LOGIN")


def test_a_group_of_emails_uses_one_imap_connection(app, session, world, now, smtp_port):
    """Do drafts, filing in Sent and reconciliation share one IMAP login per group?

    Before, each email opened two IMAP connections (its draft, then filing it in Sent) and
    each reconciliation one more.
    """
    from cryptography.fernet import Fernet
    from sqlalchemy import update

    from server.crypto import KeyRing
    from server.sending.dispatcher import Dispatcher
    from server.sending.fake import ManualClock
    from server.sending.models import ScheduledSend, SendStatus
    from server.sending.providers import MailboxResolver
    from tests.sending.test_dispatcher import plain_sends, rows, settings

    key = Fernet.generate_key().decode()
    app.config["ENCRYPTION_KEYS"] = f"k1:{key}"
    port, sink = smtp_port
    with fake_imap() as (imap_port, state):
        mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                    provider=Provider.SMTP, email="rep@a.test", display_name="Rita",
                    settings={"smtp_host": "127.0.0.1", "smtp_port": port,
                              "smtp_security": "none", "smtp_username": "rita",
                              "imap_host": "127.0.0.1", "imap_port": imap_port,
                              "imap_security": "none"},
                    secret={"password": "right-password"}, keyring=KeyRing.parse(f"k1:{key}"),
                    now=now)
        session.commit()
        plain_sends(session, world.rep, now, 6)
        dispatcher = Dispatcher(app.extensions["relay.write_sessionmaker"],
                                MailboxResolver(app, clock=lambda: now),
                                settings=settings(group=3), clock=ManualClock(now),
                                draw=lambda: 0.5)
        assert dispatcher.run_once().sent == 6
        assert len(sink.received) == 6
        assert logins(state) == 2  # two groups of three emails
        assert len(state.folders["Sent"].messages) == 6
        assert state.folders["Drafts"].messages == {}  # each draft dropped once sent
        assert state.commands.count("APPEND") == 12 and state.commands.count("LOGOUT") == 2
        # Their answers were lost after all: reconciliation finds each one in Sent.
        session.execute(update(ScheduledSend).values(status=SendStatus.UNCERTAIN,
                                                     lease_token=None, lease_expires_at=None))
        session.commit()
        assert dispatcher.run_once().sent == 6
        assert logins(state) == 4 and state.commands.count("LOGOUT") == 4
        assert [r.status for r in rows(session)] == [SendStatus.SENT] * 6
        assert len(sink.received) == 6  # found, not sent again


def test_a_dropped_imap_connection_is_not_used_again_in_its_group(smtp_port):
    """After an IMAP error inside a scope, does the next use log in afresh?"""
    from server.sending.providers.smtp import imap_scope

    port, _ = smtp_port
    with fake_imap() as (imap_port, state):
        t = transport(port, imap_port)
        with imap_scope():
            assert t.reconcile(message(send_id=41), None).outcome is Outcome.UNKNOWN
            with pytest.raises(OSError), t.imap("Sent") as (imap, _ok):
                imap.shutdown()  # the connection dies under us
                raise OSError("connection reset")
            assert t.reconcile(message(send_id=42), None).outcome is Outcome.UNKNOWN
            assert t.reconcile(message(send_id=43), None).outcome is Outcome.UNKNOWN
        assert logins(state) == 2 and t.imap_connections_opened == 2
        # Outside a scope each use has its own connection, as before.
        t.reconcile(message(send_id=44), None)
        assert logins(state) == 3


def test_earlier_imap_drafts_are_removed_by_message_id(smtp_port):
    """Does delete_drafts remove exactly the IMAP drafts carrying the given Message-ID?"""
    port, _sink = smtp_port
    with fake_imap() as (imap_port, state):
        t = transport(port, imap_port)
        msg = message(send_id=41)
        t.create_draft(msg)
        t.create_draft(message(send_id=42))
        assert t.delete_drafts(msg.message_id) == 1
        [(raw, _flags)] = state.folders["Drafts"].messages.values()
        assert msg.message_id.encode() not in raw
        assert t.delete_drafts(msg.message_id) == 0
