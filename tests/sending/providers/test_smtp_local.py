"""SMTP transport against a real aiosmtpd server on 127.0.0.1, and the local outbox folder."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from server.sending.headers import build_message
from server.sending.providers.local import LocalOutboxTransport
from server.sending.providers.smtp import SmtpConfig, SmtpTransport
from server.sending.transport import (
    DailyLimitError,
    Draft,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    TransientError,
)

TASK_TAG = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2"  # an opaque task tag (server.tasks.tags)
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def message(send_id=5, to=("pat@client.test",)):
    return build_message(send_id=send_id, sender="Rita <rita@acme.test>", to=list(to),
                         subject="Hello", html="<p>Hi</p>", text="Hi", date=NOW,
                         task_tag=TASK_TAG)


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

    start.controllers = controllers
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
    assert back["Message-ID"] == msg.message_id and back["X-Relay-Task"] == TASK_TAG
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


# -- one SMTP connection for many emails ----------------------------------------------------


class SessionSink(Sink):
    """A sink that records which client connection (peer) carried each email.

    ``drop_first_data`` aborts the connection at the first DATA (the outcome is unknown to
    the client); ``close_mail_on_second`` answers 421 to the second MAIL FROM of a connection.
    """

    def __init__(self, drop_first_data=False, refuse_first_data=None,
                 close_mail_on_second=False):
        super().__init__()
        self.drop_first_data = drop_first_data
        self.refuse_first_data = refuse_first_data
        self.close_mail_on_second = close_mail_on_second
        self.peers: list[tuple[str, int]] = []
        self.transports = []
        self.mails: dict[tuple[str, int], int] = {}
        self.datas = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        n = self.mails[session.peer] = self.mails.get(session.peer, 0) + 1
        if self.close_mail_on_second and n == 2:
            return "421 4.4.2 Idle too long, closing connection"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.datas += 1
        self.transports.append(server.transport)
        if self.drop_first_data and self.datas == 1:
            server.transport.abort()
            return "250 OK"
        if self.refuse_first_data and self.datas == 1:
            return self.refuse_first_data
        self.peers.append(session.peer)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


def plain(port, **limits):
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5,
                                    **limits), clock=lambda: NOW)


def test_smtp_many_emails_over_one_connection(smtp_server):
    """Do consecutive emails share one SMTP connection, each delivered once, exactly built?"""
    sink = SessionSink()
    port = smtp_server(sink, auth=True)
    t = transport(port)
    messages = [message(send_id=i) for i in range(1, 8)]
    for m in messages:
        assert t.send_draft(Draft(m.message_id), m).provider_id == m.message_id
    assert t.connections_opened == 1
    assert len(set(sink.peers)) == 1 and len(sink.received) == 7
    got = [BytesParser(policy=default).parsebytes(c)["Message-ID"] for *_, c in sink.received]
    assert got == [m.message_id for m in messages]
    t.close()
    assert t._session is None


def test_smtp_session_limits_open_new_connections(smtp_server):
    """Are the per-connection email count and the idle limit honoured?"""
    sink = SessionSink()
    port = smtp_server(sink)
    t = plain(port, session_messages=3)
    for i in range(7):
        t.send_draft(Draft("d"), message(send_id=i + 1))
    assert t.connections_opened == 3  # 3 + 3 + 1
    assert [len([p for p in sink.peers if p == peer]) for peer in dict.fromkeys(sink.peers)] \
        == [3, 3, 1]
    clock = [1000.0]
    idle = plain(port, session_idle_seconds=30)
    idle.monotonic = lambda: clock[0]
    idle.send_draft(Draft("d"), message(send_id=20))
    clock[0] += 29
    idle.send_draft(Draft("d"), message(send_id=21))
    assert idle.connections_opened == 1
    clock[0] += 31
    idle.send_draft(Draft("d"), message(send_id=22))
    assert idle.connections_opened == 2
    idle.close()
    t.close()


def test_smtp_reconnects_when_the_server_closed_the_kept_connection(smtp_server):
    """Is an email sent over a new connection, once, when the server dropped the kept one?"""
    import time

    sink = SessionSink()
    port = smtp_server(sink)
    t = plain(port)
    t.send_draft(Draft("d"), message(send_id=1))
    loop = smtp_server.controllers[-1].loop
    loop.call_soon_threadsafe(sink.transports[-1].close)  # the server hangs up while idle
    time.sleep(0.2)
    second = message(send_id=2)
    t.send_draft(Draft("d"), second)
    assert t.connections_opened == 2
    assert len(sink.received) == 2 and len(set(sink.peers)) == 2
    ids = [BytesParser(policy=default).parsebytes(c)["Message-ID"] for *_, c in sink.received]
    assert ids.count(second.message_id) == 1
    t.close()


def test_smtp_reconnects_after_421_to_mail_from_on_a_kept_connection(smtp_server):
    """Does a 421 to MAIL FROM on a kept connection lead to one resend on a new connection?"""
    sink = SessionSink(close_mail_on_second=True)
    port = smtp_server(sink)
    t = plain(port)
    t.send_draft(Draft("d"), message(send_id=1))
    t.send_draft(Draft("d"), message(send_id=2))
    assert t.connections_opened == 2 and len(sink.received) == 2
    # On a fresh connection the same answer is the server's refusal: no second try.
    fresh = plain(port, session_messages=1)
    fresh.send_draft(Draft("d"), message(send_id=3))
    assert fresh.connections_opened == 1
    t.close()


def test_smtp_no_reuse_after_an_unknown_outcome(smtp_server):
    """After a connection lost during DATA, is the next email sent over a new connection?"""
    sink = SessionSink(drop_first_data=True)
    port = smtp_server(sink)
    t = plain(port)
    with pytest.raises(OutcomeUnknown):
        t.send_draft(Draft("d"), message(send_id=1))
    assert t._session is None
    t.send_draft(Draft("d"), message(send_id=2))
    assert t.connections_opened == 2 and len(sink.received) == 1
    t.close()


def test_smtp_no_reuse_after_a_refusal(smtp_server):
    """After the server refused a message, is the next one sent over a new connection?"""
    sink = SessionSink(refuse_first_data="451 4.3.0 Temporary failure")
    port = smtp_server(sink)
    t = plain(port)
    with pytest.raises(TransientError):
        t.send_draft(Draft("d"), message(send_id=1))
    t.send_draft(Draft("d"), message(send_id=2))
    assert t.connections_opened == 2 and len(set(sink.peers)) == 1
    t.close()


def test_smtp_silent_kept_connection_is_transient_not_resent(smtp_server):
    """A kept connection that stops answering MAIL FROM: a transient error, no second try."""
    import asyncio

    class Silent(SessionSink):
        async def handle_MAIL(self, server, session, envelope, address, mail_options):
            n = self.mails[session.peer] = self.mails.get(session.peer, 0) + 1
            if n == 2:
                await asyncio.sleep(3)
            envelope.mail_from = address
            return "250 OK"

    sink = Silent()
    port = smtp_server(sink)
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=1))
    t.send_draft(Draft("d"), message(send_id=1))
    with pytest.raises(TransientError, match="before DATA"):
        t.send_draft(Draft("d"), message(send_id=2))
    assert t.connections_opened == 1 and t._session is None and len(sink.received) == 1


def scripted_server(replies: list[bytes]) -> tuple[int, threading.Thread, socket.socket]:
    """A one-connection SMTP server on 127.0.0.1 that sends ``replies`` in order.

    The first reply is the greeting; each later one answers one command line. It stops by
    itself after the last reply (closing the connection).
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(replies[0])
            buf = b""
            for reply in replies[1:]:
                while b"\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                _line, buf = buf.split(b"\r\n", 1)
                conn.sendall(reply)
        srv.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv.getsockname()[1], thread, srv


def test_smtp_4xx_greeting_is_transient():
    """Is a server that greets with 421 (nothing could be taken) a transient error?"""
    port, thread, _srv = scripted_server([b"421 4.3.2 Service not available\r\n"])
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5))
    with pytest.raises(TransientError, match="421"):
        t.send_draft(Draft("d"), message())
    thread.join(5)


@pytest.mark.parametrize("answer,error", [
    (b"451 4.3.0 Not now\r\n", TransientError),
    (b"554 5.3.4 No\r\n", PermanentError),
])
def test_smtp_refusal_of_the_data_command_is_known(answer, error):
    """Is a refusal of the DATA command itself (before the body left) retried or failed?"""
    port, thread, _srv = scripted_server([
        b"220 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", answer, b"221 bye\r\n"])
    t = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5))
    with pytest.raises(error, match=r"SMTP DATA: " + answer[:3].decode()):
        t.send_draft(Draft("d"), message())
    thread.join(5)
