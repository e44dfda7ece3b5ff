"""Moving people through a campaign with the database: gating, lazy queue rows, late steps, X1.

Services are called with an explicit ``now``; the API tests freeze the views' clock. Campaigns
run in Europe/Paris (UTC+1 in November 2026), so 11:00 local is 10:00 UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.campaigns.models import (
    Campaign,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    StepStatus,
)
from server.campaigns.progress import leave, send_finished
from server.campaigns.spec import LatePolicy, SendOption, StepType
from server.feed.models import EventKind, FeedEvent
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus
from server.tasks.service import complete_task, skip_task
from tests.conftest import (
    World,
    email_step,
    make_campaign,
    make_contact,
    make_template,
    task_step,
)

PARIS = ZoneInfo("Europe/Paris")
CHOOSE, AT_TIME = SendOption.CHOOSE_AT_LAUNCH, SendOption.AT_TIME
SAME, TASK = SendOption.SAME_AS_PREVIOUS, SendOption.TASK


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def fetch(session: Session, stmt) -> list:
    """Fresh rows of ``stmt``; the read transaction is ended so requests are never blocked."""
    session.expire_all()
    rows = list(session.scalars(stmt))
    session.commit()
    return rows


def step_rows(session: Session, enrollment_id: int) -> list[EnrollmentStep]:
    return fetch(session, select(EnrollmentStep)
                 .where(EnrollmentStep.enrollment_id == enrollment_id)
                 .order_by(EnrollmentStep.position))


def tasks_of(session: Session, enrollment_id: int) -> list[Task]:
    return fetch(session, select(Task).where(Task.enrollment_id == enrollment_id)
                 .order_by(Task.id))


def sends_of(session: Session, enrollment_id: int) -> list[ScheduledSend]:
    return fetch(session, select(ScheduledSend)
                 .where(ScheduledSend.enrollment_id == enrollment_id)
                 .order_by(ScheduledSend.id))


def statuses(session: Session, enrollment_id: int) -> list[str]:
    return [r.status.value for r in step_rows(session, enrollment_id)]


def dispatch(session: Session, send: ScheduledSend, sent_at: datetime) -> None:
    """Stand in for the dispatcher (a later issue): the email left at ``sent_at``."""
    send.status = SendStatus.SENT
    send.sent_at = sent_at
    session.flush()
    assert send_finished(session, send.id, sent_at)
    session.commit()


def launch_one(session: Session, world: World, campaign: Campaign, now: datetime,
               **kwargs) -> int:
    contact = make_contact(session, world.rep, f"p{now.timestamp():.0f}@example.com")
    result = launch(session, world.rep, campaign, [contact.id], now=now, **kwargs)
    session.commit()
    ((enrollment_id, _),) = result.enrolled
    return enrollment_id


def test_T5_T6_email_after_a_call_waits_for_the_call(session: Session, world: World,
                                                     now: datetime):
    """Does a day-1 email after a call wait for the call, then go right after it (not before)?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [task_step(1), email_step(1, SAME, tpl)],
                             timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now)  # Tue 24 Nov 2026 11:00 Paris
    assert statuses(session, eid) == ["active", "pending"]
    assert sends_of(session, eid) == []
    (call,) = tasks_of(session, eid)
    assert call.due_at == utc(2026, 11, 24, 10, 0)

    assert complete_task(session, world.rep, call.id, now=utc(2026, 11, 24, 15, 0))
    session.commit()
    assert statuses(session, eid) == ["done", "active"]
    (send,) = sends_of(session, eid)
    assert send.status is SendStatus.SCHEDULED
    assert send.due_at == utc(2026, 11, 24, 15, 0)  # not 10:00, its own planned moment


def test_T5_skipping_a_task_also_activates_the_next_step(session: Session, world: World,
                                                        now: datetime):
    """Does skipping count as done for gating, so the next step becomes active?"""
    campaign = make_campaign(session, world.rep, [task_step(1), task_step(2, StepType.INMAIL)],
                             timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now)
    (call,) = tasks_of(session, eid)
    assert skip_task(session, world.rep, call.id, now=utc(2026, 11, 24, 12, 0))
    session.commit()
    assert statuses(session, eid) == ["skipped", "active"]
    assert [t.type for t in tasks_of(session, eid)] == [StepType.CALL, StepType.INMAIL]
    assert tasks_of(session, eid)[1].due_at == utc(2026, 11, 25, 10, 0)


def test_T6_only_the_active_step_has_a_queue_row(session: Session, world: World,
                                                 now: datetime):
    """After launch and after each step, does only the active step have a Task/ScheduledSend?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [
        email_step(1, CHOOSE, tpl), task_step(2), email_step(3, SAME, tpl),
        task_step(4, StepType.CUSTOM)], timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now, send_at=utc(2026, 11, 24, 13, 30))
    assert statuses(session, eid) == ["active", "pending", "pending", "pending"]
    assert tasks_of(session, eid) == []
    (send,) = sends_of(session, eid)
    assert send.due_at == utc(2026, 11, 24, 13, 30)

    dispatch(session, send, utc(2026, 11, 24, 13, 30))
    assert statuses(session, eid) == ["done", "active", "pending", "pending"]
    (call,) = tasks_of(session, eid)
    assert call.due_at == utc(2026, 11, 25, 13, 30)  # day 2 at S's time of day (T4)
    assert len(sends_of(session, eid)) == 1

    complete_task(session, world.rep, call.id, now=utc(2026, 11, 25, 14, 0))
    session.commit()
    assert statuses(session, eid) == ["done", "done", "active", "pending"]
    assert len(tasks_of(session, eid)) == 1
    assert [s.status for s in sends_of(session, eid)] == [SendStatus.SENT, SendStatus.SCHEDULED]


def test_T6_send_finished_is_harmless_when_repeated(session: Session, world: World,
                                                    now: datetime):
    """Does reporting the same sent email twice move the person on only once?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, CHOOSE, tpl), task_step(2),
                                                  task_step(3)], timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now, send_at=utc(2026, 11, 24, 13, 30))
    (send,) = sends_of(session, eid)
    dispatch(session, send, utc(2026, 11, 24, 13, 31))
    assert not send_finished(session, send.id, utc(2026, 11, 24, 13, 40))
    session.commit()
    assert statuses(session, eid) == ["done", "active", "pending"]
    assert len(tasks_of(session, eid)) == 1


def test_T6_unsent_email_does_not_advance(session: Session, world: World, now: datetime):
    """Is a still-scheduled email refused as a reason to move on?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, CHOOSE, tpl), task_step(2)],
                             timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now, send_at=utc(2026, 11, 24, 13, 30))
    (send,) = sends_of(session, eid)
    assert not send_finished(session, send.id, utc(2026, 11, 24, 14, 0))
    assert statuses(session, eid) == ["active", "pending"]


def test_T3_task_email_sent_at_1547_sets_next_same_as_previous_time(
        session: Session, world: World, now: datetime):
    """Email task sent at 15:47 local: is the day-3 same_as_previous email due 15:47 local?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, TASK, tpl),
                                                  email_step(3, SAME, tpl)],
                             timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now)
    (task,) = tasks_of(session, eid)
    assert task.type is StepType.EMAIL and task.due_at == utc(2026, 11, 24, 10, 0)
    # Before the rep sends it, the preview uses the task's due moment (11:00 local).
    assert step_rows(session, eid)[1].planned_at == paris(2026, 11, 26, 11, 0)

    assert complete_task(session, world.rep, task.id, now=utc(2026, 11, 24, 15, 0),
                         sent_at=paris(2026, 11, 24, 15, 47))
    session.commit()
    (send,) = sends_of(session, eid)
    assert send.due_at.astimezone(PARIS) == paris(2026, 11, 26, 15, 47)
    assert send.due_at == utc(2026, 11, 26, 14, 47)
    assert step_rows(session, eid)[0].done_at == utc(2026, 11, 24, 14, 47)


def test_T3_automatic_email_sent_late_moves_the_next_same_as_previous_time(
        session: Session, world: World, now: datetime):
    """First email planned 13:30 but sent 13:52: does the day-2 same_as_previous take 13:52?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, CHOOSE, tpl),
                                                  email_step(2, SAME, tpl)],
                             timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now, send_at=paris(2026, 11, 24, 13, 30))
    (first,) = sends_of(session, eid)
    dispatch(session, first, paris(2026, 11, 24, 13, 52))
    second = sends_of(session, eid)[1]
    assert second.due_at == paris(2026, 11, 25, 13, 52)


def test_T7_slide_task_two_days_late_moves_later_steps_two_days(
        session: Session, world: World, now: datetime):
    """Slide: day-1 call (Tue 24 Nov) done Thu 26 Nov: do the later steps move two days?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [
        task_step(1), task_step(2), email_step(4, AT_TIME, tpl, send_time=time(9, 0))],
        timezone="Europe/Paris", late_task_policy=LatePolicy.SLIDE)
    eid = launch_one(session, world, campaign, now)
    assert [r.planned_at for r in step_rows(session, eid)] == [
        paris(2026, 11, 24, 11, 0), paris(2026, 11, 25, 11, 0), paris(2026, 11, 27, 9, 0)]

    (call,) = tasks_of(session, eid)
    complete_task(session, world.rep, call.id, now=paris(2026, 11, 26, 10, 0))
    session.commit()
    call2 = tasks_of(session, eid)[1]
    assert call2.due_at == paris(2026, 11, 27, 11, 0)  # Fri, was Wed
    assert step_rows(session, eid)[2].planned_at == paris(2026, 11, 29, 9, 0)  # Sun, was Fri


def test_T7_slide_with_skip_weekends_counts_weekdays(session: Session, world: World):
    """Slide + skip_weekends: call due Thu 26 done Mon 30 Nov: do steps move 2 weekdays, not 4?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [
        task_step(1), task_step(2), email_step(3, AT_TIME, tpl, send_time=time(9, 0))],
        timezone="Europe/Paris", skip_weekends=True)
    eid = launch_one(session, world, campaign, paris(2026, 11, 26, 11, 0))  # Thursday
    assert [r.planned_at for r in step_rows(session, eid)] == [
        paris(2026, 11, 26, 11, 0), paris(2026, 11, 27, 11, 0), paris(2026, 11, 30, 9, 0)]

    (call,) = tasks_of(session, eid)
    complete_task(session, world.rep, call.id, now=paris(2026, 11, 30, 16, 0))
    session.commit()
    assert tasks_of(session, eid)[1].due_at == paris(2026, 12, 1, 11, 0)  # Tue, day 4
    assert step_rows(session, eid)[2].planned_at == paris(2026, 12, 2, 9, 0)  # Wed, day 5


def test_T7_keep_task_two_days_late_keeps_dates_and_releases_passed_steps_one_at_a_time(
        session: Session, world: World, now: datetime):
    """Keep: call done 2 days late: passed steps due at once, one at a time; day 5 unchanged?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [
        task_step(1), task_step(2), email_step(3, AT_TIME, tpl, send_time=time(9, 0)),
        task_step(5)],
        timezone="Europe/Paris", late_task_policy=LatePolicy.KEEP)
    eid = launch_one(session, world, campaign, now)

    (call,) = tasks_of(session, eid)
    complete_task(session, world.rep, call.id, now=utc(2026, 11, 26, 12, 0))
    session.commit()
    call2 = tasks_of(session, eid)[1]
    assert call2.due_at == utc(2026, 11, 26, 12, 0)  # day 2 has passed: due at once
    assert statuses(session, eid) == ["done", "active", "pending", "pending"]
    assert sends_of(session, eid) == []  # the passed day-3 email waits its turn

    complete_task(session, world.rep, call2.id, now=utc(2026, 11, 26, 12, 30))
    session.commit()
    (send,) = sends_of(session, eid)
    assert send.due_at == utc(2026, 11, 26, 12, 30)  # its 09:00 passed: at once when active
    assert step_rows(session, eid)[3].planned_at == paris(2026, 11, 28, 11, 0)  # kept day 5


def test_X1_all_steps_done_finishes_the_enrollment(session: Session, world: World,
                                                   now: datetime):
    """When the last step is done, does the person leave as finished with the reason?"""
    campaign = make_campaign(session, world.rep, [task_step(1)], timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now)
    (call,) = tasks_of(session, eid)
    complete_task(session, world.rep, call.id, now=utc(2026, 11, 24, 11, 0))
    session.commit()
    (enrollment,) = fetch(session, select(Enrollment).where(Enrollment.id == eid))
    assert enrollment.status is EnrollmentStatus.FINISHED
    assert enrollment.end_reason == "all steps done"
    assert enrollment.ended_at == utc(2026, 11, 24, 11, 0)


# -- X1 through the API ----------------------------------------------------------------------


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Set the clock the campaign and task views read."""
    def set_now(moment: datetime) -> None:
        for module in ("server.campaigns.views", "server.tasks.views"):
            monkeypatch.setattr(f"{module}.utcnow", lambda: moment)
    return set_now


def _api_campaign(client: FlaskClient, world: World, tpl_id: int) -> int:
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "Outreach", "timezone": "Europe/Paris", "steps": [
            {"day": 1, "type": "email", "send_option": "choose_at_launch",
             "template_id": tpl_id},
            {"day": 2, "type": "call"},
            {"day": 3, "type": "email", "send_option": "same_as_previous",
             "template_id": tpl_id}]})
    assert r.status_code == 201, r.json
    return r.json["id"]


def test_X1_remove_cancels_pending_work_and_keeps_what_was_sent(
        client: FlaskClient, session: Session, world: World, freeze, now: datetime):
    """Does remove cancel open task, pending steps and sends with the reason, keep sent mail?"""
    freeze(now)
    tpl = make_template(session, world.rep)
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada")
    bob = make_contact(session, world.rep, "bob@example.com", first_name="Bob")
    session.commit()
    h = world.auth(world.rep)
    cid = _api_campaign(client, world, tpl.id)
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={
        "contact_ids": [ada.id, bob.id], "send_at": "2026-11-24T13:30:00+00:00"})
    assert r.status_code == 201, r.json
    ids = {e["contact_id"]: e["enrollment_id"] for e in r.json["enrolled"]}
    (ada_send,) = sends_of(session, ids[ada.id])
    dispatch(session, ada_send, utc(2026, 11, 24, 13, 30))  # Ada's first email went out

    freeze(utc(2026, 11, 25, 9, 0))
    for eid in ids.values():
        r = client.post(f"/api/enrollments/{eid}/remove", headers=h,
                        json={"reason": "asked us to stop"})
        assert r.status_code == 200, r.json
        assert r.json["status"] == "removed" and r.json["end_reason"] == "asked us to stop"

    a_rows, b_rows = step_rows(session, ids[ada.id]), step_rows(session, ids[bob.id])
    assert [r.status.value for r in a_rows] == ["done", "cancelled", "cancelled"]
    assert [r.status.value for r in b_rows] == ["cancelled"] * 3
    assert {r.note for r in a_rows[1:] + b_rows} == {"cancelled: asked us to stop"}
    (a_task,) = tasks_of(session, ids[ada.id])
    assert a_task.status is TaskStatus.CANCELLED
    (a_send,) = sends_of(session, ids[ada.id])
    assert a_send.status is SendStatus.SENT and a_send.sent_at == utc(2026, 11, 24, 13, 30)
    (b_send,) = sends_of(session, ids[bob.id])
    assert b_send.status is SendStatus.CANCELLED
    assert b_send.reason == "cancelled: asked us to stop"

    removed = session.scalars(select(FeedEvent).where(
        FeedEvent.kind == EventKind.PERSON_REMOVED).order_by(FeedEvent.id)).all()
    assert [(e.data["enrollment_id"], e.data["reason"]) for e in removed] == [
        (ids[ada.id], "asked us to stop"), (ids[bob.id], "asked us to stop")]

    # Removing again is harmless and records nothing more.
    r = client.post(f"/api/enrollments/{ids[ada.id]}/remove", headers=h, json={})
    assert r.status_code == 200 and r.json["end_reason"] == "asked us to stop"
    assert len(session.scalars(select(FeedEvent).where(
        FeedEvent.kind == EventKind.PERSON_REMOVED)).all()) == 2


def test_X1_remove_another_reps_enrollment_is_404(
        client: FlaskClient, session: Session, world: World, freeze, now: datetime):
    """Can another rep remove a person from my campaign? (They must not even see it.)"""
    freeze(now)
    campaign = make_campaign(session, world.rep, [task_step(1)])
    eid = launch_one(session, world, campaign, now)
    for user in (world.rep2, world.outsider):
        r = client.post(f"/api/enrollments/{eid}/remove", headers=world.auth(user), json={})
        assert r.status_code == 404
    (enrollment,) = fetch(session, select(Enrollment).where(Enrollment.id == eid))
    assert enrollment.status is EnrollmentStatus.ACTIVE


def test_X1_end_campaign_removes_everyone_and_refuses_new_launches(
        client: FlaskClient, session: Session, world: World, freeze, now: datetime):
    """Does ending a campaign take everyone out with the reason, and refuse launches (409)?"""
    freeze(now)
    tpl = make_template(session, world.rep)
    ada = make_contact(session, world.rep, "ada@example.com")
    bob = make_contact(session, world.rep, "bob@example.com")
    cyd = make_contact(session, world.rep, "cyd@example.com")
    session.commit()
    h = world.auth(world.rep)
    cid = _api_campaign(client, world, tpl.id)
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={
        "contact_ids": [ada.id, bob.id], "send_at": "2026-11-24T13:30:00+00:00"})
    assert r.status_code == 201, r.json
    ids = [e["enrollment_id"] for e in r.json["enrolled"]]
    (ada_send,) = sends_of(session, ids[0])
    dispatch(session, ada_send, utc(2026, 11, 24, 13, 30))

    r = client.post(f"/api/campaigns/{cid}/end", headers=h)
    assert r.status_code == 200, r.json
    assert r.json["people_removed"] == 2 and r.json["campaign"]["status"] == "ended"
    for eid in ids:
        (enrollment,) = fetch(session, select(Enrollment).where(Enrollment.id == eid))
        assert enrollment.status is EnrollmentStatus.ENDED
        assert enrollment.end_reason == "campaign ended"
        assert all(r.status in (StepStatus.DONE, StepStatus.CANCELLED)
                   for r in step_rows(session, eid))
    assert tasks_of(session, ids[0])[0].status is TaskStatus.CANCELLED
    assert sends_of(session, ids[0])[0].status is SendStatus.SENT
    assert sends_of(session, ids[1])[0].status is SendStatus.CANCELLED

    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={
        "contact_ids": [cyd.id], "send_at": "2026-11-24T13:30:00+00:00"})
    assert r.status_code == 409
    assert "ended" in r.json["message"]
    assert session.scalar(select(Enrollment).where(Enrollment.contact_id == cyd.id)) is None
    # Ending twice is harmless.
    r = client.post(f"/api/campaigns/{cid}/end", headers=h)
    assert r.status_code == 200 and r.json["people_removed"] == 0


def test_X1_end_campaign_cancels_scheduled_people(
        session: Session, world: World, client: FlaskClient, freeze, now: datetime):
    """Is a person with a future start taken out by ending, so the worker never starts them?"""
    from server.worker import tick

    freeze(now)
    campaign = make_campaign(session, world.rep, [task_step(1)])
    eid = launch_one(session, world, campaign, now, start_at=utc(2026, 11, 25, 8, 0))
    r = client.post(f"/api/campaigns/{campaign.id}/end", headers=world.auth(world.rep))
    assert r.status_code == 200 and r.json["people_removed"] == 1
    assert tick(client.application, now=utc(2026, 11, 25, 9, 0)).started == 0
    assert tasks_of(session, eid) == []
    assert statuses(session, eid) == ["cancelled"]


def test_X1_leaving_twice_through_stale_sessions_happens_once(
        client: FlaskClient, session: Session, world: World, freeze, now: datetime):
    """Does ending, via a session that read the person before a removal, keep the removal?"""
    freeze(now)
    campaign = make_campaign(session, world.rep, [task_step(1)])
    eid = launch_one(session, world, campaign, now)
    stale = session.get(Enrollment, eid)  # this session now holds the person as active
    session.commit()
    assert stale.status is EnrollmentStatus.ACTIVE
    r = client.post(f"/api/enrollments/{eid}/remove", headers=world.auth(world.rep),
                    json={"reason": "asked us to stop"})
    assert r.status_code == 200

    assert leave(session, eid, EnrollmentStatus.ENDED, "campaign ended", now) is False
    session.commit()
    (enrollment,) = fetch(session, select(Enrollment).where(Enrollment.id == eid))
    assert (enrollment.status, enrollment.end_reason) == (EnrollmentStatus.REMOVED,
                                                          "asked us to stop")
    removed = fetch(session, select(FeedEvent).where(FeedEvent.kind == EventKind.PERSON_REMOVED))
    assert len(removed) == 1


def test_T7_slide_email_sent_two_days_late_moves_later_steps(session: Session, world: World,
                                                             now: datetime):
    """Slide: first email due Tue 24 Nov leaves Thu 26 (paused mailbox): does day 2 move to Fri?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [
        email_step(1, CHOOSE, tpl), task_step(2), email_step(3, SAME, tpl)],
        timezone="Europe/Paris")
    eid = launch_one(session, world, campaign, now, send_at=paris(2026, 11, 24, 13, 30))
    (send,) = sends_of(session, eid)
    dispatch(session, send, paris(2026, 11, 26, 8, 5))
    (call,) = tasks_of(session, eid)
    assert call.due_at == paris(2026, 11, 27, 13, 30)  # day 2 was Wed 25, now Fri 27
    # Day 3 keeps the first email's real time of day (T3) on its slid date, Sat 28.
    assert step_rows(session, eid)[2].planned_at == paris(2026, 11, 28, 8, 5)
