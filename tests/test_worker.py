"""``relay worker``: one pass starts everyone whose scheduled start has come, exactly once."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server import worker
from server.campaigns.launch import launch
from server.campaigns.models import Enrollment, EnrollmentStatus
from server.cli import main
from server.feed.models import EventKind, FeedEvent
from server.tasks.models import Task
from tests.conftest import World, make_campaign, make_contact, task_step


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(session: Session, world: World, starts: list[datetime],
             launched_at: datetime) -> list[int]:
    """People whose campaign starts at each of ``starts`` (launched at ``launched_at``)."""
    campaign = make_campaign(session, world.rep, [task_step(1), task_step(2)])
    ids = []
    for i, start in enumerate(starts):
        contact = make_contact(session, world.rep, f"w{i}@example.com")
        result = launch(session, world.rep, campaign, [contact.id], start_at=start,
                        now=launched_at)
        ids.append(result.enrolled[0][0])
    session.commit()
    return ids


def count(session: Session, stmt) -> int:
    value = session.scalar(stmt)
    session.commit()  # end the read so the worker's write transaction is never blocked
    return value


def task_count(session: Session) -> int:
    return count(session, select(func.count()).select_from(Task))


def created_events(session: Session) -> int:
    return count(session, select(func.count()).select_from(FeedEvent)
                 .where(FeedEvent.kind == EventKind.TASK_CREATED))


def test_T6_tick_starts_only_people_whose_start_has_come(app: Flask, session: Session,
                                                         world: World, now: datetime):
    """At 09:00, are the 08:00 and 09:00 starts activated and the 10:00 start left waiting?"""
    early, on_time, late = schedule(
        session, world, [utc(2026, 11, 25, 8), utc(2026, 11, 25, 9), utc(2026, 11, 25, 10)], now)
    assert worker.tick(app, now=utc(2026, 11, 25, 9)).started == 2
    statuses = dict(session.execute(select(Enrollment.id, Enrollment.status)).all())
    session.commit()
    assert statuses == {early: EnrollmentStatus.ACTIVE, on_time: EnrollmentStatus.ACTIVE,
                        late: EnrollmentStatus.SCHEDULED}
    dues = set(session.scalars(select(Task.due_at)))
    session.commit()
    assert dues == {utc(2026, 11, 25, 8), utc(2026, 11, 25, 9)}


def test_tick_is_idempotent(app: Flask, session: Session, world: World, now: datetime):
    """Does running the same pass again (or later) create no second task and no new events?"""
    schedule(session, world, [utc(2026, 11, 25, 8)] * 3, now)
    assert worker.tick(app, now=utc(2026, 11, 25, 8)).started == 3
    assert (task_count(session), created_events(session)) == (3, 3)
    for moment in (utc(2026, 11, 25, 8), utc(2026, 11, 25, 8, 5), utc(2026, 12, 1)):
        assert worker.tick(app, now=moment).started == 0
    assert (task_count(session), created_events(session)) == (3, 3)


def test_one_pass_starts_everyone_due_across_batches(app: Flask, session: Session,
                                                     world: World, now: datetime):
    """With more people due than one batch holds, does a single pass still start them all?"""
    schedule(session, world, [utc(2026, 11, 25, 8)] * 5, now)
    assert worker.tick(app, now=utc(2026, 11, 25, 8), batch=2).started == 5
    assert task_count(session) == 5


def test_relay_worker_once_runs_one_pass(app: Flask, session: Session, world: World,
                                         monkeypatch: pytest.MonkeyPatch):
    """Does ``relay worker --once`` start a person whose start has passed, then exit 0?"""
    real_now = datetime.now(UTC)
    schedule(session, world, [real_now - timedelta(minutes=1)],
             launched_at=real_now - timedelta(hours=1))
    monkeypatch.setattr("server.cli._app", lambda: app)
    result = CliRunner().invoke(main, ["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert task_count(session) == 1


def test_worker_loop_survives_a_failed_pass_and_stops_when_asked(
        app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Is a failing pass logged with its error, and does the loop go on until stop is set?"""
    calls = []
    stop = threading.Event()

    def flaky(_app: Flask, now: datetime | None = None, **_kw: object) -> worker.TickResult:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        stop.set()
        return worker.TickResult()

    monkeypatch.setattr(worker, "tick", flaky)
    with caplog.at_level(logging.ERROR, logger="relay.worker"):
        worker.run(app, stop)
    assert len(calls) == 2
    assert "worker pass failed" in caplog.text and "database went away" in caplog.text
