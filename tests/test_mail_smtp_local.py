"""SMTP transport against a real aiosmtpd server on 127.0.0.1, and the local outbox folder."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from server.mail.headers import build_message
from server.mail.providers.local import LocalOutboxTransport
from server.mail.providers.smtp import SmtpConfig, SmtpTransport
from server.mail.transport import (
    DailyLimitError,
    Draft,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    TransientError,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def message(send_id=5, to=("pat@client.test",)):
    return build_message(send_id=send_id, sender="Rita <rita@acme.test>", to=list(to),
                         subject="Hello", html="<p>Hi</p>", text="Hi", date=NOW,
                         task_id=9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """An aiosmtpd handler: records accepted mail, or answers as told."""

    def __init__(self, rcpt=None, data=None, drop_after_data=False):
        self.rcpt_answer = rcpt
        self.data_answer = data
        self.drop_after_data = drop_after_data
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_answer and address.startswith("bad"):
            return self.rcpt_answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.drop_after_data:
            server.transport.abort()
            return "250 OK"
        if self.data_answer:
            return self.data_answer
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"rita" and auth_data.password == b"right-password"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server():
    controllers = []

    def start(handler, auth=False):
        port = free_port()
        kwargs = {}
        if auth:
            kwargs = dict(authenticator=authenticator, auth_require_tls=False)
        c = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        c.start()
        controllers.append(c)
        return port

    yield start
    for c in controllers:
        c.stop()


def transport(port, password="right-password", username="rita"):
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none",
                                    username=username, password=password, timeout=5),
                         clock=lambda: NOW)


def test_smtp_sends_the_built_message_with_login(smtp_server):
    """Does the SMTP transport log in and deliver the exact built bytes to the recipients?"""
    sink = Sink()
    port = smtp_server(sink, auth=True)
    t = transport(port)
    msg = message(to=("pat@client.test", '"Doe, Sam" <sam@client.test>'))
    draft = t.create_draft(msg)
    assert draft == Draft(id=msg.message_id)
    sent = t.send_draft(draft, msg)
    assert sent.provider_id == msg.message_id and sent.sent_at == NOW
    [(mail_from, rcpts, content)] = sink.received
    assert mail_from == "rita@acme.test"
    assert rcpts == ["pat@client.test", "sam@client.test"]
    back = BytesParser(policy=default).parsebytes(content)
    assert back["Message-ID"] == msg.message_id and back["X-Relay-Task"] == "9"
    assert t.reconcile(msg, draft).outcome is Outcome.UNKNOWN  # no IMAP: cannot look


def test_smtp_wrong_password_needs_reauth(smtp_server, caplog):
    """Is a refused login ReauthRequired, with the password in no message or log?"""
    port = smtp_server(Sink(), auth=True)
    with pytest.raises(ReauthRequired) as err:
        transport(port, password="wrong-pass-xyz").send_draft(Draft("d"), message())
    assert "535" in err.value.reason
    assert "wrong-pass-xyz" not in str(err.value) + caplog.text
    assert "wrong-pass-xyz" not in repr(transport(port, password="wrong-pass-xyz").config)


@pytest.mark.parametrize("answer,error", [
    ("550 5.1.1 No such user", PermanentError),
    ("450 4.2.1 Mailbox busy, try later", TransientError),
])
def test_smtp_refused_recipient(smtp_server, answer, error):
    """Is a recipient refused with 5xx permanent and with 4xx transient?"""
    port = smtp_server(Sink(rcpt=answer))
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5))
    with pytest.raises(error) as err:
        t.send_draft(Draft("d"), message(to=("bad@client.test",)))
    assert answer.split()[0] in err.value.reason


@pytest.mark.parametrize("answer,error", [
    ("554 5.6.0 Message rejected as spam", PermanentError),
    ("451 4.3.0 Temporary failure", TransientError),
    ("550 5.4.5 Daily user sending limit exceeded", DailyLimitError),
    ("421 4.7.0 Try again later, closing connection", TransientError),
])
def test_smtp_data_answers(smtp_server, answer, error):
    """Are the server's answers to the message body classified by code and reason?"""
    port = smtp_server(Sink(data=answer))
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5))
    with pytest.raises(error):
        t.send_draft(Draft("d"), message())


def test_smtp_connection_dropped_after_data_is_outcome_unknown(smtp_server):
    """Is a connection lost after the body left an unknown outcome (not a retry)?"""
    port = smtp_server(Sink(drop_after_data=True))
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5))
    with pytest.raises(OutcomeUnknown):
        t.send_draft(Draft("d"), message())


def test_smtp_nothing_listening_is_transient():
    """Is a refused connection (nothing sent) a transient error?"""
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=free_port(), security="none",
                                 timeout=2))
    with pytest.raises(TransientError, match="connect"):
        t.send_draft(Draft("d"), message())


def test_local_outbox_draft_send_reconcile(tmp_path):
    """Does the outbox write a draft, move it to sent/ once, and reconcile by folder?"""
    t = LocalOutboxTransport(tmp_path, clock=lambda: NOW)
    msg = message(send_id=77)
    assert t.reconcile(msg, None).outcome is Outcome.NOT_SENT
    draft = t.create_draft(msg)
    assert (tmp_path / "drafts" / "77.eml").exists()
    assert not list((tmp_path / "drafts").glob(".tmp-*"))
    assert t.reconcile(msg, draft).outcome is Outcome.NOT_SENT
    sent = t.send_draft(draft, msg)
    assert sent.sent_at == NOW
    assert not (tmp_path / "drafts" / "77.eml").exists()
    back = BytesParser(policy=default).parsebytes((tmp_path / "sent" / "77.eml").read_bytes())
    assert back["Message-ID"] == msg.message_id
    rec = t.reconcile(msg, draft)
    assert rec.outcome is Outcome.SENT and rec.sent is not None
    # A repeated send of the same message finds it already in sent/: nothing moves twice.
    assert t.send_draft(draft, msg).provider_id == "77.eml"
    # Another message of the same send id (a new Message-ID) is not taken for this one.
    other = message(send_id=77)
    assert t.reconcile(other, None).outcome is Outcome.NOT_SENT
    with pytest.raises(PermanentError):
        t.send_draft(Draft("77.eml"), other)
