"""Fair claiming across mailboxes, and claims, sweeps and pace slots that never wait.

In-process dispatchers with the fake transport and a passed clock (SQLite and PostgreSQL);
the tests that hold a lock from a second connection need PostgreSQL (row locks).
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.db import is_lock_timeout, make_engine, use_worker_sessions, worker_connect_args
from server.sending.dispatcher import LOCKED_RETRY, Crash, Dispatcher
from server.sending.fake import FakeResolver, FakeTransport, ManualClock
from server.sending.models import MailboxPace, ScheduledSend, SendStatus
from server.sending.pacing import Pace, fair_shares
from tests.conftest import (
    PG_URL,
    World,
    email_step,
    make_campaign,
    make_contact,
    make_template,
    make_user,
    task_step,
)
from tests.sending.test_dispatcher import automatic_campaign, make_dispatcher, plain_sends, rows

needs_pg = pytest.mark.skipif(not PG_URL, reason="row locks held from a second connection "
                                                 "need PostgreSQL; set TEST_DATABASE_URL")


@pytest.fixture
def clock(now: datetime) -> ManualClock:
    return ManualClock(now)


@pytest.fixture
def fake(clock: ManualClock) -> FakeTransport:
    return FakeTransport(now=clock.now)


def sent_by_owner(session: Session) -> Counter[int]:
    got = Counter(owner for owner, in session.execute(
        select(ScheduledSend.owner_id).where(ScheduledSend.status == SendStatus.SENT)))
    session.commit()
    return got


def test_fair_shares_split_a_batch_round_robin():
    """Does each mailbox get an equal share, within its room, the first ones the remainder?"""
    assert fair_shares([3] * 12, 20) == [2] * 8 + [1] * 4
    assert fair_shares([25, 1, 25], 20) == [10, 1, 9]
    assert fair_shares([0, 5], 3) == [0, 3]
    assert fair_shares([2, 2], 10) == [2, 2]
    assert fair_shares([1] * 5, 3) == [1, 1, 1, 0, 0]
    assert fair_shares([4], 0) == [0]
    assert fair_shares([], 5) == []


def test_after_a_bulk_launch_every_mailbox_is_served_at_its_pace(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Twelve reps launch one after another, every first email due at the same moment.

    With a pace of 3 per 45 s and batches of 20, does every rep send 3 in the first pass
    (36 in all, the sum of the pace allowances), and 3 more in each pass 45 s later?
    """
    reps = [make_user(session, world.org, f"bulk{i}@a.test") for i in range(12)]
    for rep in reps:  # launched in order, like a team launching the same morning
        tpl = make_template(session, rep)
        campaign = make_campaign(session, rep, [
            email_step(1, SendOption.AT_TIME, tpl, send_time=now.time()), task_step(2)])
        contacts = [make_contact(session, rep, f"{rep.id}-{i}@example.com").id
                    for i in range(40)]
        launch(session, rep, campaign, contacts, start_at=now, now=now)
        session.commit()
    due = session.scalars(select(ScheduledSend.due_at).distinct()).all()
    session.commit()
    assert due == [now] and len(rows(session)) == 12 * 40
    d = make_dispatcher(app, fake, clock, pace=Pace(3, 45), batch=20)
    for n in (1, 2, 3):
        result = d.run_once()
        assert result.sent == 36, (n, result)
        counts = sent_by_owner(session)
        assert {rep.id: counts[rep.id] for rep in reps} == {rep.id: 3 * n for rep in reps}
        assert d.run_once().sent == 0  # the pace of every mailbox is used up
        clock.advance(45)


def test_when_the_batch_binds_the_least_recently_served_mailbox_goes_first(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """30 reps with due emails and one claim of 10 per pass: is each served within 3 passes?"""
    reps = [make_user(session, world.org, f"many{i}@a.test") for i in range(30)]
    for rep in reps:
        plain_sends(session, rep, now, 4, prefix=f"m{rep.id}-")
    d = make_dispatcher(app, fake, clock, pace=Pace(0), batch=10, max_batches=1)
    served: list[set[int]] = []
    for _ in range(3):
        before = sent_by_owner(session)
        assert d.run_once().sent == 10
        after = sent_by_owner(session)
        served.append({o for o in after if after[o] > before[o]})
        clock.advance(1)
    assert [len(s) for s in served] == [10, 10, 10]
    assert set.union(*served) == {rep.id for rep in reps}


def test_a_crash_inside_the_sweep_sends_at_most_once_and_recovers(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """A worker dies inside the sweep of an expired ``sending`` row: is it still sent once?"""
    send_id = automatic_campaign(session, world, now)

    def die_after_sending(at: str) -> None:
        if at == "after_sending":
            raise Crash(at)

    def die_in_sweep(at: str) -> None:
        if at == "in_sweep_tx":
            raise Crash(at)

    with pytest.raises(Crash):
        make_dispatcher(app, fake, clock, crash=die_after_sending).run_once()
    clock.advance(61)
    with pytest.raises(Crash):
        make_dispatcher(app, fake, clock, crash=die_in_sweep).run_once()
    [row] = rows(session)
    assert row.status is SendStatus.SENDING  # the sweep's transaction was rolled back
    make_dispatcher(app, fake, clock).run_once()
    clock.advance(3600)
    make_dispatcher(app, fake, clock).run_once()
    [row] = rows(session)
    assert row.status is SendStatus.SENT and fake.deliveries() == {send_id: 1}


# -- never waiting on another worker (PostgreSQL row locks) ---------------------------------


def worker_dispatcher(app: Flask, fake: FakeTransport, clock: ManualClock, **changes):
    """A dispatcher on an engine with the worker session settings (lock_timeout 5 s)."""
    url = app.config["DATABASE_URL"]
    engine = make_engine(url, connect_args=worker_connect_args(
        {"DB_LOCK_TIMEOUT_SECONDS": "5"}, url))
    sessions = sessionmaker(engine.execution_options(sqlite_begin="BEGIN IMMEDIATE"),
                            expire_on_commit=False)
    d = make_dispatcher(app, fake, clock, **changes)
    return Dispatcher(sessions, FakeResolver(fake), settings=d.settings, clock=clock,
                      draw=d.draw), engine


class Holder:
    """A second connection that holds row locks in an open transaction (a stopped worker)."""

    def __init__(self, app: Flask) -> None:
        self.engine = make_engine(app.config["DATABASE_URL"])
        self.conn = self.engine.connect()

    def lock(self, sql: str, **params) -> list:
        return self.conn.execute(text(sql), params).all()

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


def timed(fn):
    """Run ``fn``; fail (instead of hanging) if it is still waiting after 20 s."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported below
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "blocked on another connection's lock"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


@needs_pg
def test_sweep_skips_rows_another_transaction_holds(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """Expired rows, one locked by a stopped worker: are the others swept without waiting?

    And the locked one once it is free?
    """
    a, b, c = plain_sends(session, world.rep, now, 3)
    session.execute(update(ScheduledSend).values(
        status=SendStatus.SENDING, lease_token="gone", lease_expires_at=now - timedelta(1)))
    session.commit()
    d, engine = worker_dispatcher(app, fake, clock)
    holder = Holder(app)
    try:
        holder.lock("SELECT id FROM scheduled_send WHERE id = :id FOR UPDATE", id=b)
        assert timed(d.sweep) == 2
        got = {r.id: r.status for r in rows(session)}
        assert got == {a: SendStatus.UNCERTAIN, b: SendStatus.SENDING, c: SendStatus.UNCERTAIN}
    finally:
        holder.release()
    assert d.sweep() == 1
    engine.dispose()


@needs_pg
def test_claim_leaves_a_mailbox_another_worker_is_claiming_for(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """While another transaction holds rep's pace row, are rep2's emails claimed, not waited?"""
    plain_sends(session, world.rep, now, 5, "a")
    plain_sends(session, world.rep2, now, 5, "b")
    session.add_all([MailboxPace(owner_id=world.rep.id, recent=[], day_count=0),
                     MailboxPace(owner_id=world.rep2.id, recent=[], day_count=0)])
    session.commit()
    d, engine = worker_dispatcher(app, fake, clock, pace=Pace(0))
    holder = Holder(app)
    try:
        holder.lock("SELECT owner_id FROM mailbox_pace WHERE owner_id = :o FOR UPDATE",
                    o=world.rep.id)
        held = timed(d.claim_batch)
    finally:
        holder.release()
    owners = {session.get(ScheduledSend, h.claim.id).owner_id for h in held}
    session.commit()
    assert len(held) == 5 and owners == {world.rep2.id}
    assert len(d.claim_batch()) == 5  # free again: rep's turn
    engine.dispose()


@needs_pg
def test_a_locked_pace_row_means_try_later_not_a_wait(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """The mailbox's pace row is held elsewhere as the email is to be marked ``sending``.

    Does the email wait, drafted, ``LOCKED_RETRY`` (no waiting on the lock), then go once?
    """
    [send_id] = plain_sends(session, world.rep, now, 1)
    d, engine = worker_dispatcher(app, fake, clock)
    held = d.claim_batch()
    holder = Holder(app)
    try:
        holder.lock("SELECT owner_id FROM mailbox_pace WHERE owner_id = :o FOR UPDATE",
                    o=world.rep.id)
        assert timed(lambda: d.process_group(held)) == ["deferred"]
    finally:
        holder.release()
    [row] = rows(session)
    assert row.status is SendStatus.DRAFTED and row.next_attempt_at == now + LOCKED_RETRY
    assert fake.deliveries() == {}
    clock.advance(LOCKED_RETRY.total_seconds())
    assert d.run_once().sent == 1
    assert fake.deliveries() == {send_id: 1}
    engine.dispose()


@needs_pg
def test_a_lock_wait_that_times_out_is_tried_later_not_a_failed_pass(
        app: Flask, session: Session, world: World, now: datetime, clock: ManualClock,
        fake: FakeTransport):
    """The person's enrollment is locked elsewhere while the send is recorded as sent.

    Does the pass end normally after ``lock_timeout``, and the email end sent, once, after
    its lease (swept, reconciled)?
    """
    send_id = automatic_campaign(session, world, now)
    url = app.config["DATABASE_URL"]
    engine = make_engine(url, connect_args=worker_connect_args(
        {"DB_LOCK_TIMEOUT_SECONDS": "0.2"}, url))
    sessions = sessionmaker(engine, expire_on_commit=False)
    d = Dispatcher(sessions, FakeResolver(fake), settings=make_dispatcher(
        app, fake, clock).settings, clock=clock)
    enrollment = session.scalar(select(ScheduledSend.enrollment_id))
    session.commit()
    holder = Holder(app)
    try:
        holder.lock("SELECT id FROM enrollment WHERE id = :id FOR UPDATE", id=enrollment)
        result = timed(d.run_once)
    finally:
        holder.release()
    assert result.deferred == 1 and result.sent == 0
    [row] = rows(session)
    assert row.status is SendStatus.SENDING  # the "sent" transaction was rolled back
    clock.advance(61)
    d.run_once()  # sweep to uncertain, reconcile: found sent at the provider
    [row] = rows(session)
    assert row.status is SendStatus.SENT and fake.deliveries() == {send_id: 1}
    engine.dispose()


@needs_pg
def test_worker_sessions_carry_lock_and_idle_timeouts_and_keepalives(app: Flask,
                                                                      world: World):
    """After ``use_worker_sessions``, do the app's connections have the worker settings?"""
    app.config.update(DB_LOCK_TIMEOUT_SECONDS="2.5", DB_IDLE_IN_TRANSACTION_SECONDS="45")
    use_worker_sessions(app)
    with app.extensions["relay.engine"].connect() as conn:
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in (
            "lock_timeout", "idle_in_transaction_session_timeout", "tcp_keepalives_idle",
            "tcp_keepalives_interval", "tcp_keepalives_count")}
    assert shown == {"lock_timeout": "2500ms", "idle_in_transaction_session_timeout": "45s",
                     "tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10",
                     "tcp_keepalives_count": "3"}
    with app.extensions["relay.read_engine"].connect() as conn:
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "2500ms"
    holder = Holder(app)
    try:
        assert holder.lock("SELECT id FROM \"user\" FOR UPDATE")
        with app.extensions["relay.engine"].connect() as conn, \
                pytest.raises(OperationalError) as caught:
            conn.execute(text("UPDATE \"user\" SET name = name"))
        assert is_lock_timeout(caught.value)
    finally:
        holder.release()


def test_worker_connect_args_defaults_and_kept_url_options():
    """Are the defaults sane, a URL's own ``options`` kept, and a negative value refused?"""
    args = worker_connect_args({}, "postgresql+psycopg://h/db?options=-c%20search_path%3Dx")
    assert args["options"].startswith("-c search_path=x -c lock_timeout=5000 "
                                      "-c idle_in_transaction_session_timeout=60000")
    assert (args["keepalives"], args["keepalives_idle"], args["keepalives_interval"],
            args["keepalives_count"]) == (1, 30, 10, 3)
    with pytest.raises(ValueError, match="DB_LOCK_TIMEOUT_SECONDS"):
        worker_connect_args({"DB_LOCK_TIMEOUT_SECONDS": "-1"})
