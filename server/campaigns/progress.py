"""Moving people through a campaign: gating (T5), materialisation (T6), T7, leaving (X1).

Only the active step of a person exists in the queue: a task for the rep, or a row of the
scheduled-send outbox for an automatic email. Finishing it re-plans the rest and activates the
next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.campaigns.models import (
    ENROLLMENT_TRANSITIONS,
    Campaign,
    CampaignStep,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    StepStatus,
)
from server.campaigns.planning import PlannedStep, plan
from server.campaigns.service import settings_of, step_specs, steps_in_day
from server.campaigns.spec import StepSpec, StepType
from server.contacts.models import Contact
from server.errors import Conflict
from server.feed.models import EventKind
from server.feed.service import record, record_many
from server.salesforce import enqueue as salesforce
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus

FINISHED_STEP = (StepStatus.DONE, StepStatus.SKIPPED)
OPEN_STEP = (StepStatus.PENDING, StepStatus.ACTIVE)


def contact_name(contact: Contact | Any) -> str:
    """How a contact is named in titles and the feed."""
    name = f"{contact.first_name} {contact.last_name}".strip()
    return name or contact.email or f"contact {contact.id}"


def task_title(step: CampaignStep, contact: Contact | Any) -> str:
    """The title of the task a step creates for a contact."""
    if step.title:
        return f"{step.title} ({contact_name(contact)})"
    who = contact_name(contact)
    return {
        StepType.EMAIL: f"Email {who}",
        StepType.CALL: f"Call {who}",
        StepType.INMAIL: f"LinkedIn InMail to {who}",
        StepType.CUSTOM: f"Task for {who}",
    }[StepType(step.type)]


def queue_rows(
    campaign: Campaign,
    step: CampaignStep,
    spec: StepSpec,
    step_no: int,
    enrollment: dict[str, Any],
    contact: Contact | Any,
    enrollment_step_id: int,
    due_at: datetime,
) -> tuple[type[Task] | type[ScheduledSend], dict[str, Any], dict[str, Any]]:
    """The queue row an active step becomes (T6), and its feed event without the row id."""
    common = dict(org_id=campaign.org_id, owner_id=enrollment["owner_id"],
                  campaign_id=campaign.id, enrollment_id=enrollment["id"],
                  enrollment_step_id=enrollment_step_id, contact_id=contact.id, due_at=due_at)
    event_data = {"campaign_id": campaign.id, "enrollment_id": enrollment["id"],
                  "contact_id": contact.id, "day": step.day, "step": step_no,
                  "due_at": due_at.isoformat()}
    if spec.makes_task:
        title = task_title(step, contact)
        row = dict(common, type=step.type, status=TaskStatus.OPEN, title=title, notes=step.notes,
                   priority=step.priority, day=step.day, step_in_day=step_no)
        feed = dict(org_id=campaign.org_id, owner_id=enrollment["owner_id"],
                    kind=EventKind.TASK_CREATED,
                    summary=f"New task: {title} — {campaign.name}, day {step.day}",
                    data=dict(event_data, type=step.type.value))
        return Task, row, feed
    row = dict(common, status=SendStatus.SCHEDULED, to_email=contact.email or "")
    feed = dict(org_id=campaign.org_id, owner_id=enrollment["owner_id"],
                kind=EventKind.SEND_SCHEDULED,
                summary=f"Email to {contact_name(contact)} scheduled for {due_at:%Y-%m-%d %H:%M} "
                        f"UTC — {campaign.name}, day {step.day}",
                data=event_data)
    return ScheduledSend, row, feed


def _lock(session: Session, enrollment_id: int) -> Enrollment | None:
    """Lock a person's enrollment and read it afresh.

    ``populate_existing`` matters: sessions keep objects across commits
    (``expire_on_commit=False``), so without it a row locked after another transaction changed
    it would come back with the old status and a person could leave twice.
    """
    return session.scalar(
        select(Enrollment).where(Enrollment.id == enrollment_id).with_for_update()
        .execution_options(populate_existing=True)
    )


def _lock_step(session: Session, enrollment_step_id: int) -> EnrollmentStep | None:
    """Lock one of a person's step rows and read it afresh (see ``_lock``)."""
    return session.get(EnrollmentStep, enrollment_step_id, with_for_update=True,
                       populate_existing=True)


def enrollment_plan(session: Session, enrollment: Enrollment,
                    campaign: Campaign | None = None) -> tuple[list[EnrollmentStep],
                                                               list[PlannedStep]]:
    """A person's step rows and their plan given what is already done (P1, T3, T7, T10)."""
    campaign = campaign or session.get(Campaign, enrollment.campaign_id)
    assert campaign is not None
    rows = list(session.scalars(select(EnrollmentStep)
                                .where(EnrollmentStep.enrollment_id == enrollment.id)
                                .order_by(EnrollmentStep.position)
                                .execution_options(populate_existing=True)))
    done = {r.position: r.done_at for r in rows if r.status in FINISHED_STEP and r.done_at}
    skipped = {r.position for r in rows if r.status is StepStatus.SKIPPED and r.done_at}
    planned = plan(step_specs(campaign.steps), settings_of(campaign), enrollment.start_at,
                   send_at=enrollment.send_at, done=done, skipped=skipped)
    return rows, planned


def advance(session: Session, enrollment_id: int, now: datetime) -> None:
    """Re-plan a person's remaining steps and activate the next one (T5, T6, T7).

    Safe to call any number of times: a step that is already active is left as it is.
    """
    enrollment = _lock(session, enrollment_id)
    if enrollment is None or enrollment.status is not EnrollmentStatus.ACTIVE:
        return
    campaign = session.get(Campaign, enrollment.campaign_id)
    assert campaign is not None
    rows, planned = enrollment_plan(session, enrollment, campaign)
    for row, p in zip(rows, planned, strict=True):
        if row.status in OPEN_STEP and row.planned_at != p.due_at:
            row.planned_at = p.due_at
    nxt = next((r for r in rows if r.status not in (*FINISHED_STEP, StepStatus.CANCELLED)), None)
    if nxt is None:
        _set_status(enrollment, EnrollmentStatus.FINISHED, "all steps done", now)
        session.flush()
        return
    if nxt.status is StepStatus.ACTIVE:
        session.flush()
        return
    nxt.status = StepStatus.ACTIVE
    contact = session.get(Contact, enrollment.contact_id)
    assert contact is not None
    specs = step_specs(campaign.steps)
    model, row, feed = queue_rows(
        campaign, campaign.steps[nxt.position], specs[nxt.position],
        steps_in_day(campaign.steps)[nxt.position],
        {"id": enrollment.id, "owner_id": enrollment.owner_id}, contact, nxt.id,
        planned[nxt.position].due_at)
    obj = model(**row)
    session.add(obj)
    session.flush()
    if model is Task:
        salesforce.task_created(session, obj.id, now, org_id=obj.org_id)  # issue 7
    feed["data"][("task_id" if model is Task else "send_id")] = obj.id
    record_many(session, [feed])


def _set_status(enrollment: Enrollment, status: EnrollmentStatus, reason: str,
                now: datetime) -> None:
    allowed = ENROLLMENT_TRANSITIONS.get(enrollment.status, frozenset())
    if status not in allowed:
        raise Conflict(f"the person is {enrollment.status.value} in this campaign and cannot "
                       f"become {status.value}")
    enrollment.status = status
    enrollment.end_reason = reason
    enrollment.ended_at = now


def step_finished(session: Session, enrollment_step_id: int, status: StepStatus,
                  done_at: datetime, now: datetime) -> None:
    """Record that a person's active step was done or skipped, then move them on (T5)."""
    row = _lock_step(session, enrollment_step_id)
    if row is None or row.status is not StepStatus.ACTIVE:
        return
    row.status = status
    row.done_at = done_at
    session.flush()
    advance(session, row.enrollment_id, now)


def send_finished(session: Session, send_id: int, now: datetime) -> bool:
    """Move a person on once their automatic email has left (T5, T6, T7).

    The dispatcher calls this in the transaction that marks the send ``sent`` (with its
    ``sent_at``): the step is done at ``sent_at`` (which a later ``same_as_previous`` email
    copies, T3), a ``send.sent`` event is recorded and the next step becomes active. Returns
    False, changing nothing, when the send is not ``sent`` or its step was already moved on.
    """
    send = session.get(ScheduledSend, send_id, populate_existing=True)
    if send is None or send.status is not SendStatus.SENT or send.enrollment_step_id is None:
        return False
    row = _lock_step(session, send.enrollment_step_id)
    if row is None or row.status is not StepStatus.ACTIVE:
        return False
    sent_at = send.sent_at or now
    contact = session.get(Contact, send.contact_id)
    campaign = session.get(Campaign, send.campaign_id)
    assert contact is not None and campaign is not None
    record(session, org_id=send.org_id, owner_id=send.owner_id, kind=EventKind.SEND_SENT,
           summary=f"Email to {contact_name(contact)} sent — {campaign.name}",
           data={"send_id": send.id, "campaign_id": campaign.id,
                 "enrollment_id": send.enrollment_id, "contact_id": contact.id,
                 "sent_at": sent_at.isoformat()})
    salesforce.email_sent(session, send, now)  # Salesforce sync (issue 7)
    step_finished(session, row.id, StepStatus.DONE, sent_at, now)
    return True


def leave(session: Session, enrollment_id: int, status: EnrollmentStatus, reason: str,
          now: datetime) -> bool:
    """Take a person out of a campaign (X1): cancel pending steps, open tasks and unsent email.

    Nothing already sent is touched. Returns False when they had already left.
    """
    enrollment = _lock(session, enrollment_id)
    if enrollment is None:
        return False
    if enrollment.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.SCHEDULED):
        return False
    _set_status(enrollment, status, reason, now)
    note = f"cancelled: {reason}"
    session.execute(update(EnrollmentStep)
                    .where(EnrollmentStep.enrollment_id == enrollment_id,
                           EnrollmentStep.status.in_(OPEN_STEP))
                    .values(status=StepStatus.CANCELLED, note=note))
    session.execute(update(Task)
                    .where(Task.enrollment_id == enrollment_id, Task.status == TaskStatus.OPEN)
                    .values(status=TaskStatus.CANCELLED))
    # Only sends nobody has claimed yet can be withdrawn; one being sent is left to finish.
    session.execute(update(ScheduledSend)
                    .where(ScheduledSend.enrollment_id == enrollment_id,
                           ScheduledSend.status == SendStatus.SCHEDULED)
                    .values(status=SendStatus.CANCELLED, reason=note, updated_at=now))
    contact = session.get(Contact, enrollment.contact_id)
    campaign = session.get(Campaign, enrollment.campaign_id)
    assert contact is not None and campaign is not None
    record(session, org_id=enrollment.org_id, owner_id=enrollment.owner_id,
           kind=EventKind.PERSON_REMOVED,
           summary=f"{contact_name(contact)} left {campaign.name}: {reason}",
           data={"campaign_id": campaign.id, "enrollment_id": enrollment.id,
                 "contact_id": contact.id, "reason": reason, "status": status.value})
    session.flush()
    return True


def start_due_enrollments(session: Session, now: datetime, limit: int = 500) -> int:
    """Activate people whose scheduled start has come (run by ``relay worker``)."""
    stmt = (select(Enrollment.id)
            .where(Enrollment.status == EnrollmentStatus.SCHEDULED, Enrollment.start_at <= now)
            .order_by(Enrollment.start_at).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    ids: Sequence[int] = list(session.scalars(stmt))
    for enrollment_id in ids:
        session.execute(update(Enrollment)
                        .where(Enrollment.id == enrollment_id,
                               Enrollment.status == EnrollmentStatus.SCHEDULED)
                        .values(status=EnrollmentStatus.ACTIVE))
        advance(session, enrollment_id, now)
    return len(ids)
