"""T10: a skipped email counts as done for gating when it was skipped, but was not sent.

Pure planner tests (no database), then one through skipping an email task with the service and
reading the person's plan from the API, with fixed moments (Paris is UTC+1 in November 2026).
"""

# Test docstrings are the question the test answers (CONVENTIONS), so they end in "?".

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.campaigns.models import EnrollmentStep
from server.campaigns.planning import PlannedStep, plan
from server.campaigns.rules import validate_steps
from server.campaigns.spec import CampaignSettings, SendOption, StepSpec, StepType
from server.sending.models import ScheduledSend
from server.tasks.models import Task
from server.tasks.service import skip_task
from tests.conftest import World, email_step, make_campaign, make_contact, make_template

PARIS = ZoneInfo("Europe/Paris")
EMAIL = StepType.EMAIL
AT_TIME, SAME, TASK = SendOption.AT_TIME, SendOption.SAME_AS_PREVIOUS, SendOption.TASK
IN_PARIS = CampaignSettings("Europe/Paris")


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def campaign(*specs: tuple) -> list[StepSpec]:
    """Steps from ``(day, type[, option[, send_time]])`` tuples, positions in order."""
    steps = []
    for position, spec in enumerate(specs):
        day, kind, *rest = spec
        option = rest[0] if rest else None
        send_time = rest[1] if len(rest) > 1 else None
        steps.append(StepSpec(position, day, kind, option, send_time))
    assert validate_steps(steps) == []
    return steps


def local(p: PlannedStep) -> datetime:
    """The due moment as a naive Paris wall-clock time, for readable assertions."""
    return p.due_local.replace(tzinfo=None)


# --- pure planner --------------------------------------------------------------------------------


def test_T10_same_as_previous_takes_the_skipped_emails_planned_time_of_day():
    """Day-2 email task (due 08:00) skipped at 16:20: is day 3 at 08:00, saying so, not 16:20?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 30)), (2, EMAIL, TASK), (3, EMAIL, SAME))
    start = paris(2026, 11, 23, 8, 0)
    done = {0: paris(2026, 11, 23, 9, 30), 1: paris(2026, 11, 24, 16, 20)}
    result = plan(steps, IN_PARIS, start, done=done, skipped={1})
    assert local(result[1]) == datetime(2026, 11, 24, 8, 0)  # what it was planned for (T4)
    assert result[1].done_at == utc(2026, 11, 24, 15, 20)
    assert local(result[2]) == datetime(2026, 11, 25, 8, 0)
    assert result[2].rule == "same_as_previous"
    assert result[2].explanation == (
        "day 3 (Wed 25 Nov), same time as previous email "
        "(planned time of the skipped email on day 2, 08:00) (T3, T10)"
    )


def test_T10_the_same_moment_sent_rather_than_skipped_is_copied():
    """The same day-2 email task *sent* at 16:20: does day 3 copy 16:20 (T3), unlike T10?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 30)), (2, EMAIL, TASK), (3, EMAIL, SAME))
    done = {0: paris(2026, 11, 23, 9, 30), 1: paris(2026, 11, 24, 16, 20)}
    result = plan(steps, IN_PARIS, paris(2026, 11, 23, 8, 0), done=done)
    assert local(result[2]) == datetime(2026, 11, 25, 16, 20)
    assert "(day 2, sent at 16:20)" in result[2].explanation


def test_T10_skipped_email_counts_as_done_for_gating_when_it_was_skipped():
    """Day-1 email task skipped at 16:20: does the day-1 same_as_previous go right after?"""
    steps = campaign((1, EMAIL, TASK), (1, EMAIL, SAME), (2, EMAIL, SAME))
    done = {0: paris(2026, 11, 23, 16, 20)}
    result = plan(steps, IN_PARIS, paris(2026, 11, 23, 8, 0), done=done, skipped={0})
    assert local(result[1]) == datetime(2026, 11, 23, 16, 20)
    assert result[1].rule == "after_previous"
    assert result[1].explanation.endswith("goes right after the previous step, done at 16:20 (T5)")
    # Day 2 copies the real time of the day-1 email that was sent (16:20), not the skipped one.
    assert local(result[2]) == datetime(2026, 11, 24, 16, 20)


def test_T10_the_skipped_emails_planned_time_is_after_gating():
    """Email task gated behind a call done at 14:10, skipped at 17:00: is day 2 at 14:10?"""
    steps = campaign((1, StepType.CALL), (1, EMAIL, TASK), (2, EMAIL, SAME))
    done = {0: paris(2026, 11, 23, 14, 10), 1: paris(2026, 11, 23, 17, 0)}
    result = plan(steps, IN_PARIS, paris(2026, 11, 23, 8, 0), done=done, skipped={1})
    assert local(result[1]) == datetime(2026, 11, 23, 14, 10)
    assert local(result[2]) == datetime(2026, 11, 24, 14, 10)
    assert "planned time of the skipped email on day 1, 14:10" in result[2].explanation


def test_T10_skipped_must_be_among_the_done_steps():
    """Is a skipped position that is not done refused?"""
    steps = campaign((1, EMAIL, TASK), (2, EMAIL, SAME))
    with pytest.raises(ValueError, match="skipped"):
        plan(steps, IN_PARIS, paris(2026, 11, 23, 8, 0), skipped={0})


# --- through the service and the API --------------------------------------------------------------


NOW = utc(2026, 11, 24, 10, 0)  # Tue 24 Nov 2026, 11:00 Paris


def test_T10_skipping_an_email_task_schedules_the_next_at_its_planned_time(
        client: FlaskClient, session: Session, world: World,
        monkeypatch: pytest.MonkeyPatch):
    """Email task due 11:00 skipped at 16:20: is the day-2 email due 11:00, and why said so?"""
    monkeypatch.setattr("server.campaigns.views.utcnow", lambda: utc(2026, 11, 24, 15, 30))
    tpl = make_template(session, world.rep)
    camp = make_campaign(session, world.rep, [email_step(1, TASK, tpl), email_step(2, SAME, tpl)],
                         timezone="Europe/Paris")
    contact = make_contact(session, world.rep, "skip@example.com")
    result = launch(session, world.rep, camp, [contact.id], now=NOW)
    session.commit()
    ((eid, _),) = result.enrolled
    task = session.scalars(select(Task).where(Task.enrollment_id == eid)).one()
    assert task.due_at == utc(2026, 11, 24, 10, 0)

    skipped_at = utc(2026, 11, 24, 15, 20)  # 16:20 Paris
    assert skip_task(session, world.rep, task.id, now=skipped_at)
    session.commit()

    session.expire_all()
    rows = list(session.scalars(select(EnrollmentStep).where(EnrollmentStep.enrollment_id == eid)
                                .order_by(EnrollmentStep.position)))
    assert [r.status.value for r in rows] == ["skipped", "active"]
    assert rows[0].done_at == skipped_at
    send = session.scalars(select(ScheduledSend).where(ScheduledSend.enrollment_id == eid)).one()
    assert send.due_at == utc(2026, 11, 25, 10, 0)  # Wed 11:00 Paris, not 16:20
    session.commit()

    r = client.get(f"/api/enrollments/{eid}/plan", headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    steps = r.json["steps"]
    assert [s["status"] for s in steps] == ["skipped", "active"]
    assert steps[1]["due_local"] == "2026-11-25T11:00:00+01:00"
    assert steps[1]["explanation"] == (
        "day 2 (Wed 25 Nov), same time as previous email "
        "(planned time of the skipped email on day 1, 11:00) (T3, T10)"
    )
