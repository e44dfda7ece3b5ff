"""Automatic campaign emails leave through a connected mailbox, threaded when follow-ups.

Worker tick → dispatcher → MailboxResolver → SMTP (aiosmtpd on 127.0.0.1) or Graph (the local
stand-in on 127.0.0.1).
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from email.parser import BytesParser
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from sqlalchemy import select

from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.crypto import KeyRing
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import Provider
from server.sending.models import ScheduledSend, SendStatus
from server.sending.providers import MailboxResolver
from server.worker import tick
from tests.conftest import email_step, make_campaign, make_contact, make_template
from tests.fake_graph import fake_graph
from tests.mailboxes.test_views import RotatingMsClient
from tests.sending.providers.test_smtp_local import Sink, authenticator, free_port

KEY = Fernet.generate_key().decode()
DAY1 = datetime(2026, 11, 25, 9, 1, tzinfo=UTC)
DAY2 = datetime(2026, 11, 26, 9, 1, tzinfo=UTC)


def follow_up_campaign(session, world, now):
    first = make_template(session, world.rep, "First")
    second = make_template(session, world.rep, "Second")
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, first, send_time=time(9, 0)),
        email_step(2, SendOption.AT_TIME, second, send_time=time(9, 0), follow_up=True)])
    contact = make_contact(session, world.rep, "pat@client.test", first_name="Pat")
    ((eid, _),) = launch(session, world.rep, campaign, [contact.id], now=now).enrolled
    session.commit()
    return eid


def sends(session, eid):
    session.rollback()
    return session.scalars(select(ScheduledSend).where(ScheduledSend.enrollment_id == eid)
                           .order_by(ScheduledSend.id)
                           .execution_options(populate_existing=True)).all()


@pytest.fixture
def mail_app(app):
    app.config.update(ENCRYPTION_KEYS=f"k1:{KEY}", MAIL_TRANSPORT="mailbox",
                      MAIL_SYNC_SECONDS=3 * 86400.0)  # the DAY2 tick does not sync again
    return app


def test_automatic_emails_leave_through_smtp_threaded(mail_app, session, world, now):
    """Do both emails reach the SMTP server from the rep's mailbox, the second in-thread?"""
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    try:
        mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                    provider=Provider.SMTP, email="rep@a.test", display_name="Rita Rep",
                    settings={"smtp_host": "127.0.0.1", "smtp_port": port,
                              "smtp_security": "none", "smtp_username": "rita"},
                    secret={"password": "right-password"}, keyring=KeyRing.parse(f"k1:{KEY}"),
                    now=now)
        eid = follow_up_campaign(session, world, now)
        tick(mail_app, DAY1)
        first = sends(session, eid)[0]
        assert first.status is SendStatus.SENT, first.reason
        tick(mail_app, DAY2)
        second = sends(session, eid)[1]
        assert second.status is SendStatus.SENT, second.reason
    finally:
        ctl.stop()
    assert len(sink.received) == 2
    (from1, to1, raw1), (_, _, raw2) = sink.received
    m1 = BytesParser(policy=default).parsebytes(raw1)
    m2 = BytesParser(policy=default).parsebytes(raw2)
    assert (from1, to1) == ("rep@a.test", ["pat@client.test"])
    assert m1["From"] == "Rita Rep <rep@a.test>" and m1["Message-ID"] == first.message_id
    assert m1["X-Relay-Send"] == str(first.id)
    assert m2["In-Reply-To"] == first.message_id and first.message_id in m2["References"]


def test_automatic_follow_up_leaves_through_graph_as_a_reply(mail_app, session, world, now,
                                                             caplog):
    """Does the follow-up go out as a createReply draft on the first email's Graph id?"""
    mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                provider=Provider.MICROSOFT, email="rep@a.test", display_name="Rita Rep",
                settings={}, secret={"refresh_token": "rt-1"},
                keyring=KeyRing.parse(f"k1:{KEY}"), now=now)
    eid = follow_up_campaign(session, world, now)
    with fake_graph() as (base, state):
        mail_app.extensions["relay.mailbox_resolver"] = MailboxResolver(
            mail_app, graph_base_url=base, ms_token_client=RotatingMsClient())
        tick(mail_app, DAY1)
        tick(mail_app, DAY2)
    first, second = sends(session, eid)
    assert (first.status, second.status) == (SendStatus.SENT, SendStatus.SENT), (
        first.reason, second.reason)
    posts = [(r.method, r.path) for r in state.requests if r.method == "POST"]
    assert posts == [
        ("POST", "/me/messages"), ("POST", f"/me/messages/{first.provider_message_id}/send"),
        ("POST", f"/me/messages/{first.provider_message_id}/createReply"),
        ("POST", f"/me/messages/{second.provider_message_id}/send")]
    assert state.messages[first.provider_message_id]["internetMessageId"] == first.message_id
    assert second.thread_id == first.thread_id
    # Microsoft rotated the refresh token on the first refresh: the new one was kept.
    mb = mbx.get_mailbox(session, world.rep.id)
    assert mbx.read_secret(mb, KeyRing.parse(f"k1:{KEY}")) == {"refresh_token": "rt-2"}
    # No transaction was open during a provider call (the store would have waited, then failed).
    assert "could not store the rotated refresh token" not in caplog.text


def test_automatic_follow_up_leaves_through_gmail_in_its_thread(mail_app, session, world, now):
    """Do both emails go through drafts.create/send, the follow-up in the first's thread?"""
    import base64
    import json

    from googleapiclient.http import HttpMockSequence

    def ok(body):
        return ({"status": "200"}, json.dumps(body))

    http = HttpMockSequence([
        ok({"id": "r-1", "message": {"id": "m-1", "threadId": "t-1"}}),
        ok({"id": "m-1", "threadId": "t-1", "labelIds": ["SENT"]}),
        ok({"emailAddress": "rep@a.test", "historyId": "500"}),  # the sync's first pass
        ok({"id": "r-2", "message": {"id": "m-2", "threadId": "t-1"}}),
        ok({"id": "m-2", "threadId": "t-1", "labelIds": ["SENT"]}),
    ])
    # One sync in the test's two passes (a day apart): the second pass sends only.
    mail_app.config["MAIL_SYNC_SECONDS"] = 7 * 24 * 3600.0
    mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id, provider=Provider.GOOGLE,
                email="rep@a.test", display_name="Rita Rep", settings={},
                secret={"refresh_token": "1//r"}, keyring=KeyRing.parse(f"k1:{KEY}"), now=now)
    eid = follow_up_campaign(session, world, now)
    mail_app.extensions["relay.mailbox_resolver"] = MailboxResolver(mail_app,
                                                                    gmail_http=lambda c: http)
    tick(mail_app, DAY1)
    tick(mail_app, DAY2)
    first, second = sends(session, eid)
    assert (first.status, second.status) == (SendStatus.SENT, SendStatus.SENT), (
        first.reason, second.reason)
    assert (first.provider_message_id, first.thread_id) == ("m-1", "t-1")
    calls = [(method, uri.split("?")[0].rsplit("/users/me/", 1)[1])
             for uri, method, _body, _headers in http.request_sequence]
    # The first email leaves on DAY1, a day after its due date, so the follow-up slides by a
    # day too (T7, `slide`) and leaves in the second pass; the mailbox sync of the first pass
    # records where the mailbox is.
    assert calls == [("POST", "drafts"), ("POST", "drafts/send"), ("GET", "profile"),
                     ("POST", "drafts"), ("POST", "drafts/send")]
    assert (first.sent_at, second.sent_at) == (DAY1, DAY2)
    follow = json.loads(http.request_sequence[3][2])
    assert follow["message"]["threadId"] == "t-1"
    raw = BytesParser(policy=default).parsebytes(
        base64.urlsafe_b64decode(follow["message"]["raw"]))
    assert raw["In-Reply-To"] == first.message_id
    assert json.loads(http.request_sequence[4][2]) == {"id": "r-2"}
