"""The dispatcher recovering on its own: a stop request, one log line per outcome, drafts.

In-process, with the fake transport (and the Graph stand-in on 127.0.0.1, and Gmail's
HttpMockSequence, for the drafts), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta

import pytest
from flask import Flask
from googleapiclient.discovery import build
from googleapiclient.http import HttpMockSequence
from sqlalchemy.orm import Session

from server.sending.dispatcher import Crash, Dispatcher
from server.sending.fake import FakeResolver, FakeTransport, ManualClock
from server.sending.models import SendStatus
from server.sending.providers.gmail import GmailTransport
from server.sending.providers.graph import GraphTransport
from server.sending.transport import Draft, OutboundMessage
from tests.conftest import World
from tests.fake_graph import fake_graph
from tests.sending.test_dispatcher import LEASE, plain_sends, rows, settings


def make(app: Flask, transport, clock: ManualClock, *, stop=None, crash=None,
         **changes) -> Dispatcher:
    return Dispatcher(app.extensions["relay.write_sessionmaker"], FakeResolver(transport),
                      settings=settings(**changes), clock=clock, draw=lambda: 0.5,
                      crash=crash, stop_requested=stop)


@pytest.fixture
def clock(now: datetime) -> ManualClock:
    return ManualClock(now)


@pytest.fixture
def fake(clock: ManualClock) -> FakeTransport:
    return FakeTransport(now=clock.now)


# -- a stop request ----------------------------------------------------------------------


def test_a_stop_during_a_group_finishes_the_call_in_flight_and_gives_back_the_rest(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Stop asked while the 2nd email is being sent: it is recorded `sent`; nothing else starts.

    The 6 drafted emails not yet started stay `drafted` with their lease released (their
    draft kept), the pass returns, and a later pass sends each of them once.
    """
    ids = plain_sends(session, world.rep, now, 8)
    stop = {"now": False}
    real = fake.send_draft

    def send(draft: Draft, message: OutboundMessage):
        sent = real(draft, message)
        if len(fake.delivered) == 2:
            stop["now"] = True  # SIGTERM arrives while this call is in flight
        return sent

    fake.send_draft = send  # type: ignore[method-assign]
    result = make(app, fake, clock, stop=lambda: stop["now"]).run_once()
    assert (result.claimed, result.sent, result.returned) == (8, 2, 6)
    after = rows(session)
    assert [r.status for r in after] == [SendStatus.SENT] * 2 + [SendStatus.DRAFTED] * 6
    assert all(r.lease_token is None and r.lease_expires_at is None for r in after)
    assert all(r.draft_id and r.retries == 0 for r in after[2:])
    assert [c.op for c in fake.calls].count("send") == 2
    stop["now"] = False
    assert make(app, fake, clock).run_once().sent == 6
    assert fake.deliveries() == {i: 1 for i in ids}
    assert [c.op for c in fake.calls].count("draft") == 8  # the kept drafts were reused


def test_a_stop_while_drafting_returns_unstarted_rows_to_scheduled(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Stop asked during the 2nd draft: the drafts made are kept, the rest go back to scheduled."""
    plain_sends(session, world.rep, now, 5)
    stop = {"now": False}
    real = fake.create_draft

    def draft(message: OutboundMessage):
        made = real(message)
        if len(fake.drafts) == 2:
            stop["now"] = True
        return made

    fake.create_draft = draft  # type: ignore[method-assign]
    result = make(app, fake, clock, stop=lambda: stop["now"]).run_once()
    assert (result.claimed, result.returned, result.sent) == (5, 5, 0)
    after = rows(session)
    assert [r.status for r in after] == [SendStatus.DRAFTED] * 2 + [SendStatus.SCHEDULED] * 3
    assert all(r.lease_token is None for r in after)
    assert [c.op for c in fake.calls] == ["draft", "draft"]


def test_a_stop_between_groups_returns_the_rest_of_the_batch_and_claims_no_more(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Stop asked after the first group: the second group goes back unstarted, no new claim."""
    plain_sends(session, world.rep, now, 6)
    asked: list[bool] = []
    stop = {"now": False}

    def stop_requested() -> bool:
        asked.append(stop["now"])
        return stop["now"]

    def after_send(point: str) -> None:
        if point == "after_provider_send" and len(fake.delivered) == 3:
            stop["now"] = True

    result = make(app, fake, clock, stop=stop_requested, crash=after_send, group=3,
                  batch=6).run_once()
    assert (result.claimed, result.sent, result.returned) == (6, 3, 3)
    assert [r.status for r in rows(session)] == [SendStatus.SENT] * 3 + [
        SendStatus.SCHEDULED] * 3
    assert asked[-1] is True
    assert make(app, fake, clock, stop=lambda: True).run_once().claimed == 0


# -- the send outcome log line ------------------------------------------------------------


LINE = re.compile(r'^send outcome send=(\d+) mailbox=(\d+) provider=(\w+) outcome=(\w+) '
                  r'reason="([^"]*)" attempt=(\d+)$')


def test_one_log_line_per_send_outcome(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport, caplog: pytest.LogCaptureFixture):
    """Does each outcome give one `send outcome` line: INFO when sent, WARNING when not?"""
    a, b, c = plain_sends(session, world.rep, now, 3)
    fake.script["send"] = ["ok", "permanent", "503"]
    with caplog.at_level(logging.INFO, logger="relay.dispatch"):
        make(app, fake, clock).run_once()
    lines = [(r.levelno, LINE.match(r.getMessage())) for r in caplog.records
             if r.name == "relay.dispatch" and r.getMessage().startswith("send outcome")]
    assert all(m is not None for _, m in lines), [r.getMessage() for r in caplog.records]
    got = [(level, m.group(1, 2, 3, 4, 6)) for level, m in lines]  # type: ignore[union-attr]
    owner = str(world.rep.id)
    assert got == [
        (logging.INFO, (str(a), owner, "fake", "sent", "1")),
        (logging.WARNING, (str(b), owner, "fake", "failed", "1")),
        (logging.WARNING, (str(c), owner, "fake", "retried", "1")),
    ]
    reasons = [m.group(5) for _, m in lines]  # type: ignore[union-attr]
    assert "550 recipient rejected" in reasons[1] and "503" in reasons[2]


def test_provider_names_in_the_log_line(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        caplog: pytest.LogCaptureFixture):
    """Are Gmail and Graph mailboxes logged as google and microsoft?"""
    for kind, name in (("gmail", "google"), ("graph", "microsoft")):
        caplog.clear()
        transport = FakeTransport(now=clock.now, kind=kind)
        plain_sends(session, world.rep, now, 1, prefix=kind)
        with caplog.at_level(logging.INFO, logger="relay.dispatch"):
            make(app, transport, clock).run_once()
        assert f"provider={name} outcome=sent" in caplog.text


# -- drafts -------------------------------------------------------------------------------


def test_a_draft_made_before_a_crash_is_found_by_message_id_and_removed(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """The worker dies right after the provider made the draft, before recording it.

    The next attempt reuses the email's Message-ID, finds the earlier draft by it and
    removes it before drafting again: the Drafts folder ends empty, one delivery.
    """
    [send_id] = plain_sends(session, world.rep, now, 1)
    real = fake.create_draft

    def draft_then_die(message: OutboundMessage):
        real(message)
        raise Crash("killed between the draft and its commit")

    fake.create_draft = draft_then_die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        make(app, fake, clock).run_once()
    [orphan] = fake.drafts.values()
    [row] = rows(session)
    assert row.status is SendStatus.CLAIMED and row.message_id == orphan.message_id
    fake.create_draft = real  # type: ignore[method-assign]
    clock.advance(LEASE.total_seconds() + 1)
    assert make(app, fake, clock).run_once().sent == 1
    assert fake.drafts == {}
    assert [c.op for c in fake.calls] == ["draft", "discard", "draft", "send"]
    [(delivered_id, message_id, _)] = fake.delivered
    assert (delivered_id, message_id) == (send_id, orphan.message_id)
    [row] = rows(session)
    assert row.status is SendStatus.SENT and row.message_id == orphan.message_id


def test_a_draft_whose_answer_was_lost_is_not_left_behind(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A draft created but answered with a dropped connection: retried, no orphan left."""
    plain_sends(session, world.rep, now, 1)
    fake.script["draft"] = ["drop"]
    assert make(app, fake, clock).run_once().retried == 1
    assert len(fake.drafts) == 1
    clock.advance(600)
    assert make(app, fake, clock).run_once().sent == 1
    assert fake.drafts == {} and sum(fake.deliveries().values()) == 1


def test_a_first_draft_does_not_search_for_earlier_ones(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """No extra provider call on the normal path: the Message-ID is new, nothing to find."""
    plain_sends(session, world.rep, now, 3)
    make(app, fake, clock).run_once()
    assert [c.op for c in fake.calls] == ["draft"] * 3 + ["send"] * 3


class OneResolver:
    """Every rep sends through the one given transport."""

    def __init__(self, transport) -> None:
        self.transport = transport

    def transport_for(self, owner_id: int):
        return self.transport


def test_graph_draft_left_by_a_crash_is_deleted_by_internet_message_id(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock):
    """Graph: after a kill between createDraft and its commit, is the orphan deleted?"""
    [send_id] = plain_sends(session, world.rep, now, 1)
    with fake_graph() as (base, state):
        transport = GraphTransport(lambda: "token", base_url=base, clock=clock.now)
        real = transport.create_draft

        def draft_then_die(message: OutboundMessage):
            real(message)
            raise Crash("killed")

        transport.create_draft = draft_then_die  # type: ignore[method-assign]
        d = Dispatcher(app.extensions["relay.write_sessionmaker"], OneResolver(transport),
                       settings=settings(), clock=clock, draw=lambda: 0.5)
        with pytest.raises(Crash):
            d.run_once()
        [orphan] = list(state.messages)
        transport.create_draft = real  # type: ignore[method-assign]
        clock.advance(LEASE.total_seconds() + 1)
        assert d.run_once().sent == 1
        drafts = [m for m in state.messages.values() if m["isDraft"]]
        assert drafts == [] and orphan not in state.messages
        [sent] = state.messages.values()
        [row] = rows(session)
        assert sent["internetMessageId"] == row.message_id
        assert row.message_id.startswith(f"<relay.{send_id}.")
        assert [r.method for r in state.requests] == ["POST", "GET", "DELETE", "POST", "POST"]


def test_gmail_draft_left_by_a_crash_is_deleted_by_rfc822msgid(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock):
    """Gmail: after a kill between drafts.create and its commit, is the orphan deleted?"""
    plain_sends(session, world.rep, now, 1)

    def ok(body):
        return ({"status": "200"}, json.dumps(body))

    http = HttpMockSequence([
        ok({"id": "r-1", "message": {"id": "m-1", "threadId": "t-1"}}),  # then the kill
        ok({"drafts": [{"id": "r-1", "message": {"id": "m-1"}}]}),
        ({"status": "204"}, ""),
        ok({"id": "r-2", "message": {"id": "m-2", "threadId": "t-2"}}),
        ok({"id": "m-2", "threadId": "t-2", "labelIds": ["SENT"]}),
    ])
    transport = GmailTransport(build("gmail", "v1", http=http, static_discovery=True),
                               clock=clock.now)
    real = transport.create_draft

    def draft_then_die(message: OutboundMessage):
        real(message)
        raise Crash("killed")

    transport.create_draft = draft_then_die  # type: ignore[method-assign]
    d = Dispatcher(app.extensions["relay.write_sessionmaker"], OneResolver(transport),
                   settings=settings(), clock=clock, draw=lambda: 0.5)
    with pytest.raises(Crash):
        d.run_once()
    transport.create_draft = real  # type: ignore[method-assign]
    clock.advance(LEASE.total_seconds() + 1)
    assert d.run_once().sent == 1
    calls = [(method, uri.split("?")[0].rsplit("/users/me/", 1)[1])
             for uri, method, _body, _headers in http.request_sequence]
    assert calls == [("POST", "drafts"), ("GET", "drafts"), ("DELETE", "drafts/r-1"),
                     ("POST", "drafts"), ("POST", "drafts/send")]
    [row] = rows(session)
    query = http.request_sequence[1][0]
    assert "rfc822msgid" in query and row.message_id.strip("<>") in query.replace("%40", "@")
    assert row.provider_message_id == "m-2"


def test_reconciled_send_keeps_the_message_id_of_its_first_draft(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A send whose answer timed out, reconciled as not sent, leaves with its first Message-ID."""
    plain_sends(session, world.rep, now, 1)
    fake.script["send"] = ["timeout"]
    make(app, fake, clock).run_once()
    [row] = rows(session)
    first = row.message_id
    clock.advance(timedelta(hours=1).total_seconds())
    assert make(app, fake, clock).run_once().sent == 1
    [(_, message_id, _)] = fake.delivered
    assert message_id == first and fake.drafts == {}
