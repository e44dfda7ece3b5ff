"""The dispatcher sending through a real SMTP server on 127.0.0.1 that refuses, stalls or drops.

aiosmtpd plays the rep's mail server; the dispatcher runs in-process with a clock the test
moves. What is shown: a 4xx refusal (to ``MAIL FROM``, ``RCPT TO`` or the end of the data) is
retried from the draft until the server accepts, never through ``uncertain``; a 5xx fails; a
connection lost after the end of the data is unknown and ends in ``needs_attention`` with a
reason fit for a mailbox without a Sent folder; a stalled answer spoils only its own email;
and a worker that dies mid-group leaves the emails already accepted recorded as ``sent``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from email.parser import BytesParser
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.crypto import KeyRing
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import Provider
from server.sending.dispatcher import Crash, Dispatcher, DispatchSettings
from server.sending.fake import ManualClock
from server.sending.models import ScheduledSend, SendStatus
from server.sending.pacing import Backoff, Pace
from server.sending.providers import MailboxResolver
from server.sending.providers.smtp import SmtpConfig, SmtpTransport
from tests.conftest import World
from tests.sending.providers.test_smtp_local import free_port
from tests.sending.test_dispatcher import plain_sends

LEASE = timedelta(seconds=120)
KEY = Fernet.generate_key().decode()


class Server:
    """An aiosmtpd handler that answers as told, counting each delivered Message-ID.

    ``answers`` maps a command (``"MAIL"``, ``"RCPT"``, ``"DATA"``) to the replies given to
    its first calls, in order (``"drop"`` aborts the connection, ``"stall"`` sleeps past the
    client's timeout and then accepts); once a list is used up the server accepts.
    """

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.delivered: Counter[str] = Counter()
        self.on_stall = None
        self.stall_seconds = 2.5

    def _next(self, command: str) -> str | None:
        queue = self.answers.get(command)
        return queue.pop(0) if queue else None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        answer = self._next("MAIL")
        if answer:
            return answer
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        answer = self._next("RCPT")
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        answer = self._next("DATA")
        message_id = BytesParser(policy=default).parsebytes(envelope.content)["Message-ID"]
        if answer == "drop":
            self.delivered[message_id] += 1  # taken, but the answer never reaches the client
            server.transport.abort()
            return "250 OK"
        if answer == "stall":
            if self.on_stall is not None:
                self.on_stall()
            await asyncio.sleep(self.stall_seconds)
            self.delivered[message_id] += 1
            return "250 OK"
        if answer:
            return answer
        self.delivered[message_id] += 1
        return "250 Message accepted"


@pytest.fixture
def smtp():
    controllers = []

    def start(handler: Server) -> int:
        port = free_port()
        c = Controller(handler, hostname="127.0.0.1", port=port)
        c.start()
        controllers.append(c)
        return port

    yield start
    for c in controllers:
        c.stop()


class SmtpOnly:
    """A resolver giving every rep the same SMTP-only transport (short timeout for tests)."""

    def __init__(self, port: int, timeout: float = 1.0) -> None:
        self.transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=port,
                                                  security="none", timeout=timeout))

    def transport_for(self, owner_id: int) -> SmtpTransport:
        return self.transport


def dispatcher(app: Flask, resolver, clock: ManualClock, **changes) -> Dispatcher:
    crash = changes.pop("crash", None)
    base = dict(lease=LEASE, margin=timedelta(seconds=10), batch=20, group=10,
                pace=Pace(0), daily_cap=1000, backoff=Backoff(base=10, cap=600, max_retries=5))
    base.update(changes)
    return Dispatcher(app.extensions["relay.write_sessionmaker"], resolver,
                      settings=DispatchSettings(**base), clock=clock, draw=lambda: 0.5,
                      crash=crash)


def statuses(app: Flask) -> dict[int, SendStatus]:
    with app.extensions["relay.write_sessionmaker"]() as s:
        return dict(s.execute(select(ScheduledSend.id, ScheduledSend.status)
                              .order_by(ScheduledSend.id)).all())


def all_rows(session: Session) -> list[ScheduledSend]:
    out = list(session.scalars(select(ScheduledSend).order_by(ScheduledSend.id)
                               .execution_options(populate_existing=True)))
    session.commit()
    return out


def run_until_quiet(d: Dispatcher, clock: ManualClock, passes: int = 8) -> None:
    """Passes of the dispatcher, the clock moved past each retry moment in between."""
    for _ in range(passes):
        d.run_once()
        clock.advance(700)


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
def test_a_4xx_refusal_is_retried_until_the_server_accepts(
        app: Flask, session: Session, world: World, now: datetime, smtp, command: str):
    """Does a 451 to MAIL FROM, RCPT TO or the end of the data retry the email to `sent`?

    The refused emails go back to `drafted` with a backoff (never `uncertain` or
    `needs_attention`) and each is delivered exactly once when the server accepts.
    """
    ids = plain_sends(session, world.rep, now, 4)
    server = Server(**{command: ["451 4.3.0 Try again later"] * 4})
    port = smtp(server)
    clock = ManualClock(now)
    d = dispatcher(app, SmtpOnly(port), clock)
    result = d.run_once()
    assert (result.retried, result.uncertain, result.sent) == (4, 0, 0)
    rows = all_rows(session)
    assert {r.status for r in rows} == {SendStatus.DRAFTED}
    assert all(r.retries == 1 and "451" in (r.last_error or "") for r in rows)
    assert all(r.next_attempt_at == now + timedelta(seconds=5) for r in rows)
    assert d.run_once().claimed == 0  # the backoff is honoured
    clock.advance(5)
    assert d.run_once().sent == 4
    rows = all_rows(session)
    assert [r.status for r in rows] == [SendStatus.SENT] * 4
    assert sorted(server.delivered.values()) == [1] * 4
    assert set(server.delivered) == {r.message_id for r in rows}
    assert [r.id for r in rows] == ids


def test_a_451_to_data_through_a_connected_mailbox_is_retried_to_sent(
        app: Flask, session: Session, world: World, now: datetime, smtp):
    """The same through the rep's connected SMTP mailbox (MailboxResolver): 10 emails, 451s."""
    server = Server(DATA=["451 4.3.0 Temporary failure"] * 10)
    port = smtp(server)
    app.config.update(ENCRYPTION_KEYS=f"k1:{KEY}", MAIL_TRANSPORT="mailbox")
    mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id, provider=Provider.SMTP,
                email="rep@a.test", display_name="Rita Rep",
                settings={"smtp_host": "127.0.0.1", "smtp_port": port,
                          "smtp_security": "none"}, secret={"password": "x"},
                keyring=KeyRing.parse(f"k1:{KEY}"), now=now)
    session.commit()
    plain_sends(session, world.rep, now, 10)
    clock = ManualClock(now)
    d = dispatcher(app, MailboxResolver(app), clock)
    first = d.run_once()
    assert (first.retried, first.uncertain, first.needs_attention) == (10, 0, 0)
    run_until_quiet(d, clock, 3)
    assert set(statuses(app).values()) == {SendStatus.SENT}
    assert sorted(server.delivered.values()) == [1] * 10


@pytest.mark.parametrize("command,answer", [
    ("RCPT", "550 5.1.1 No such user"),
    ("DATA", "554 5.6.0 Message rejected"),
    ("MAIL", "553 5.7.1 Sender not allowed"),
])
def test_a_5xx_refusal_fails_with_the_servers_reason(
        app: Flask, session: Session, world: World, now: datetime, smtp, command, answer):
    """Does a 5xx end the email `failed`, with the server's answer as its reason?"""
    plain_sends(session, world.rep, now, 1)
    port = smtp(Server(**{command: [answer]}))
    assert dispatcher(app, SmtpOnly(port), ManualClock(now)).run_once().failed == 1
    [row] = all_rows(session)
    assert row.status is SendStatus.FAILED and answer.split()[0] in (row.reason or "")


def test_a_connection_lost_after_the_data_needs_attention_with_a_plain_reason(
        app: Flask, session: Session, world: World, now: datetime, smtp):
    """A server that takes the email and drops the connection before answering: unknown.

    The email goes `uncertain`; an SMTP-only mailbox has no Sent folder to look in, so it
    ends in `needs_attention` saying so plainly — and it is never sent again.
    """
    plain_sends(session, world.rep, now, 2)
    server = Server(DATA=["drop"])
    port = smtp(server)
    clock = ManualClock(now)
    d = dispatcher(app, SmtpOnly(port), clock)
    result = d.run_once()
    assert (result.uncertain, result.sent) == (1, 1)
    clock.advance(600)
    assert d.run_once().needs_attention == 1
    first, second = all_rows(session)
    assert first.status is SendStatus.NEEDS_ATTENTION and second.status is SendStatus.SENT
    assert first.reason == (
        "needs attention: the connection to the mail server was lost after the email was "
        "handed over; Relay cannot tell whether it was delivered (this mailbox has no Sent "
        "folder Relay can check)")
    assert "after the end of the data" in (first.last_error or "")
    assert "Sent folder" in first.reason and "check the mailbox" not in first.reason
    clock.advance(86400)
    assert d.run_once().claimed == 0
    assert sorted(server.delivered.values()) == [1, 1]


def test_a_stalled_answer_spoils_only_its_own_email(
        app: Flask, session: Session, world: World, now: datetime, smtp):
    """A server that sleeps past the SMTP timeout on one email of a group of 10.

    While it stalls, that email is the only one `sending` (the 9 others are `drafted`); it
    becomes `uncertain`, and the others are sent, none of them ever `uncertain`.
    """
    ids = plain_sends(session, world.rep, now, 10)
    server = Server(DATA=["250 OK", "250 OK", "stall"])
    seen: list[dict[int, SendStatus]] = []
    server.on_stall = lambda: seen.append(statuses(app))
    port = smtp(server)
    clock = ManualClock(now)
    d = dispatcher(app, SmtpOnly(port, timeout=1.0), clock)
    result = d.run_once()
    assert (result.sent, result.uncertain, result.returned, result.lost) == (9, 1, 0, 0)
    [during] = seen
    assert [during[i] for i in ids] == [SendStatus.SENT] * 2 + [SendStatus.SENDING] + [
        SendStatus.DRAFTED] * 7
    rows = all_rows(session)
    assert [r.status for r in rows] == [SendStatus.SENT] * 2 + [SendStatus.UNCERTAIN] + [
        SendStatus.SENT] * 7
    assert all(r.retries == 0 and r.last_error is None for i, r in enumerate(rows) if i != 2)


def test_a_stall_longer_than_the_lease_leaves_the_rest_drafted_then_sent(
        app: Flask, session: Session, world: World, now: datetime, smtp):
    """A stall that outlasts the whole lease: the rest of the group is left `drafted`.

    This worker may no longer write them; they are never `uncertain`, and the next pass
    sends each of them once.
    """
    plain_sends(session, world.rep, now, 6)
    server = Server(DATA=["stall"])
    clock = ManualClock(now)
    server.on_stall = lambda: clock.advance(LEASE.total_seconds() + 1)
    port = smtp(server)
    transport = SmtpOnly(port, timeout=1.0)
    result = dispatcher(app, transport, clock, max_batches=1).run_once()
    assert result.sent == 0 and result.lost == 6
    after = all_rows(session)
    assert after[0].status is SendStatus.SENDING  # its lease ran out: swept, reconciled
    assert {r.status for r in after[1:]} == {SendStatus.DRAFTED}
    result = dispatcher(app, transport, clock).run_once()
    assert (result.swept, result.sent, result.uncertain) == (1, 5, 0)
    assert result.needs_attention == 1  # SMTP only: the stalled one cannot be checked
    rows = all_rows(session)
    assert rows[0].status is SendStatus.NEEDS_ATTENTION
    assert [r.status for r in rows[1:]] == [SendStatus.SENT] * 5
    assert all(r.retries == 0 for r in rows[1:])
    assert all(server.delivered[r.message_id] == 1 for r in rows[1:])


def test_a_worker_killed_mid_group_has_recorded_the_emails_already_accepted(
        app: Flask, session: Session, world: World, now: datetime, smtp):
    """The worker dies after the server took its 4th email, before recording it.

    The 3 before are already `sent`; the 4th is the only one in doubt (`sending`, then
    reconciled); the rest were never started, are `drafted`, and are sent by the next pass.
    Every email reached the server exactly once.
    """
    ids = plain_sends(session, world.rep, now, 8)
    server = Server()
    port = smtp(server)
    clock = ManualClock(now)
    accepted: list[str] = []

    def die(point: str) -> None:
        if point == "after_provider_send":
            accepted.append(point)
            if len(accepted) == 4:
                raise Crash(point)

    with pytest.raises(Crash):
        dispatcher(app, SmtpOnly(port), clock, crash=die).run_once()
    at_death = statuses(app)
    assert [at_death[i] for i in ids] == [SendStatus.SENT] * 3 + [SendStatus.SENDING] + [
        SendStatus.DRAFTED] * 4
    clock.advance(LEASE.total_seconds() + 1)
    d = dispatcher(app, SmtpOnly(port), clock)
    result = d.run_once()
    # Swept to uncertain, then reconciled at once: SMTP only, so it cannot be checked.
    assert (result.swept, result.sent, result.needs_attention) == (1, 4, 1)
    final = statuses(app)
    assert [final[i] for i in ids] == [SendStatus.SENT] * 3 + [
        SendStatus.NEEDS_ATTENTION] + [SendStatus.SENT] * 4
    assert sorted(server.delivered.values()) == [1] * 8
    [doubt] = [r for r in all_rows(session) if r.status is SendStatus.NEEDS_ATTENTION]
    assert "Relay was interrupted while handing the email" in (doubt.reason or "")
