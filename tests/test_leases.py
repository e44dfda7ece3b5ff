"""Outbox claims and lease-fenced writes (server/leases.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import session_scope
from server.leases import (
    Claim,
    claim,
    expired,
    fenced_update,
    fenced_update_many,
    release,
)
from server.sending.models import ScheduledSend, SendStatus
from tests.conftest import PG_URL, make_contact, make_org, make_user

LEASE = timedelta(seconds=60)


def _sends(session: Session, now: datetime, count: int) -> list[int]:
    org = make_org(session)
    rep = make_user(session, org, "lease@a.test")
    ids = []
    for i in range(count):
        contact = make_contact(session, rep, f"p{i}@example.com")
        send = ScheduledSend(org_id=org.id, owner_id=rep.id, contact_id=contact.id,
                             due_at=now - timedelta(minutes=count - i),
                             to_email=contact.email, subject="Hi", html="<p>Hi</p>", text="Hi")
        session.add(send)
        session.flush()
        ids.append(send.id)
    session.commit()
    return ids


def _claim(session: Session, now: datetime, limit: int) -> list[Claim]:
    return claim(session, ScheduledSend,
                 ready=(ScheduledSend.status == SendStatus.SCHEDULED)
                 & (ScheduledSend.due_at <= now),
                 order_by=ScheduledSend.due_at, now=now, lease=LEASE, limit=limit,
                 values={"status": SendStatus.CLAIMED})


def test_claim_takes_the_oldest_ready_rows_once(app: Flask, session: Session, now: datetime):
    """Are the oldest due rows claimed with a token, a lease and an attempt, and only once?"""
    ids = _sends(session, now, 5)
    with session_scope(app) as s:
        first = _claim(s, now, 3)
    assert [c.id for c in first] == ids[:3]
    assert len({c.token for c in first}) == 1 and len(first[0].token) == 32
    with session_scope(app) as s:
        second = _claim(s, now, 10)
    assert [c.id for c in second] == ids[3:]
    assert second[0].token != first[0].token
    with session_scope(app) as s:
        assert _claim(s, now, 10) == []
        rows = s.scalars(select(ScheduledSend).order_by(ScheduledSend.id)).all()
        assert {r.status for r in rows} == {SendStatus.CLAIMED}
        assert {r.attempts for r in rows} == {1}
        assert {r.lease_expires_at for r in rows} == {now + LEASE}


def test_a_lost_lease_fences_every_write(app: Flask, session: Session, now: datetime):
    """After expiry and a re-claim, does the first holder's write change nothing?"""
    [send_id] = _sends(session, now, 1)
    with session_scope(app) as s:
        [held] = _claim(s, now, 1)
    with session_scope(app) as s:
        assert fenced_update(s, ScheduledSend, held, now=now + timedelta(seconds=30),
                             values={"reason": "still mine"}, extend=LEASE)
    later = now + timedelta(seconds=30) + LEASE  # the renewed lease has just run out
    with session_scope(app) as s:
        assert not fenced_update(s, ScheduledSend, held, now=later, values={"reason": "late"})
        assert s.scalar(select(ScheduledSend.id).where(expired(ScheduledSend, later))) == send_id
        retaken = claim(s, ScheduledSend, ready=expired(ScheduledSend, later),
                        order_by=ScheduledSend.id, now=later, lease=LEASE, limit=5,
                        values={"status": SendStatus.CLAIMED})
    assert [c.id for c in retaken] == [send_id]
    with session_scope(app) as s:
        assert not fenced_update(s, ScheduledSend, held, now=later, values={"reason": "zombie"})
        assert release(s, ScheduledSend, retaken[0], now=later,
                       values={"status": SendStatus.SCHEDULED, "reason": "released"})
    with session_scope(app) as s:
        row = s.get(ScheduledSend, send_id)
        assert row is not None
        assert (row.reason, row.status, row.lease_token, row.attempts) == (
            "released", SendStatus.SCHEDULED, None, 2)
        assert not fenced_update(s, ScheduledSend, retaken[0], now=later, values={"reason": "x"})


def test_fenced_update_many_writes_only_rows_still_held(app: Flask, session: Session,
                                                       now: datetime):
    """Does one statement write each row's own values only where its own lease still holds?"""
    ids = _sends(session, now, 5)
    with session_scope(app) as s:
        first = _claim(s, now, 2)   # rows 0, 1: one token
        second = _claim(s, now, 3)  # rows 2, 3, 4: another token
    forged = Claim(id=second[0].id, token=first[0].token, expires_at=first[0].expires_at)
    later = now + timedelta(seconds=10)
    items = [
        (first[0], {"status": SendStatus.DRAFTED, "draft_id": "d0", "subject": "own subject"}),
        (first[1], {"status": SendStatus.DRAFTED, "draft_id": "d1"}),
        (forged, {"status": SendStatus.DRAFTED, "draft_id": "forged"}),  # token of another
        (second[1], {"status": SendStatus.DRAFTED, "draft_id": "d3", "sent_at": later}),
    ]
    with session_scope(app) as s:
        written = fenced_update_many(s, ScheduledSend, items, now=later, extend=LEASE)
    assert written == {ids[0], ids[1], ids[3]}
    with session_scope(app) as s:
        rows = {r.id: r for r in s.scalars(select(ScheduledSend))}
        assert [(rows[i].status, rows[i].draft_id, rows[i].subject) for i in ids] == [
            (SendStatus.DRAFTED, "d0", "own subject"), (SendStatus.DRAFTED, "d1", "Hi"),
            (SendStatus.CLAIMED, None, "Hi"), (SendStatus.DRAFTED, "d3", "Hi"),
            (SendStatus.CLAIMED, None, "Hi")]
        assert rows[ids[3]].sent_at == later and rows[ids[1]].sent_at is None
        assert rows[ids[0]].lease_expires_at == later + LEASE
        assert rows[ids[2]].lease_expires_at == now + LEASE  # not renewed: not ours
    # A lease that ran out fences the whole statement's rows the same way.
    late = now + timedelta(seconds=10) + LEASE
    with session_scope(app) as s:
        assert fenced_update_many(s, ScheduledSend, [(second[2], {"reason": "late"}),
                                                     (first[0], {"reason": "late"})],
                                  now=late) == set()
    with session_scope(app) as s:
        assert fenced_update_many(s, ScheduledSend, [], now=late) == set()
        assert s.scalar(select(ScheduledSend.reason).where(ScheduledSend.id == ids[4])) is None


@pytest.mark.skipif(not PG_URL, reason="SKIP LOCKED is PostgreSQL's; SQLite serialises writers")
def test_concurrent_claims_on_postgresql_skip_each_others_rows(app: Flask, session: Session,
                                                              now: datetime):
    """While one worker's claim is uncommitted, does a second take only the other rows?"""
    ids = _sends(session, now, 6)
    maker = app.extensions["relay.write_sessionmaker"]
    first, second = maker(), maker()
    try:
        a = _claim(first, now, 4)  # rows locked, not yet committed
        b = _claim(second, now, 4)
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
    assert [c.id for c in a] == ids[:4]
    assert [c.id for c in b] == ids[4:]
