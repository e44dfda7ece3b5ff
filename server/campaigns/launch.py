"""Launching a campaign for a list of contacts: one enrollment per person, planned in bulk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.api.errors import FieldError
from server.campaigns.models import (
    Campaign,
    CampaignStatus,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    StepStatus,
)
from server.campaigns.planning import plan
from server.campaigns.progress import contact_name, queue_rows
from server.campaigns.service import settings_of, step_specs, steps_in_day
from server.campaigns.spec import SendOption, StepType
from server.contacts.models import Contact
from server.db import utcnow
from server.errors import Conflict, Invalid
from server.feed.models import EventKind
from server.feed.service import record_many

MAX_CONTACTS = 50_000
_CHUNK = 5_000


@dataclass
class LaunchResult:
    """Who was added (enrollment id per contact id) and who was already in the campaign."""

    enrolled: list[tuple[int, int]] = field(default_factory=list)
    already_enrolled: list[int] = field(default_factory=list)
    start: datetime | None = None
    scheduled: bool = False


def check_launch(campaign: Campaign, contact_ids: Sequence[int], start_at: datetime | None,
                 send_at: datetime | None, now: datetime) -> list[FieldError]:
    """Errors in a launch request that can be found without the database (S1, T1, T2)."""
    errors: list[FieldError] = []
    if not contact_ids:
        errors.append(FieldError("contact_ids", "give at least one contact"))
    elif len(contact_ids) > MAX_CONTACTS:
        errors.append(FieldError("contact_ids", f"at most {MAX_CONTACTS} contacts per launch"))
    first = campaign.steps[0] if campaign.steps else None
    option = first.send_option if first is not None and first.type is StepType.EMAIL else None
    if send_at is None and option is SendOption.CHOOSE_AT_LAUNCH:
        errors.append(FieldError("send_at", "the first email is sent at a moment you choose: "
                                 "give send_at (S1)", "S1"))
    if send_at is not None:
        if option not in (SendOption.CHOOSE_AT_LAUNCH, SendOption.AT_TIME):
            errors.append(FieldError("send_at", "send_at only applies when the first step is a "
                                     "choose_at_launch or at_time email (S1)", "S1"))
        elif send_at < now:
            errors.append(FieldError("send_at", f"{send_at.isoformat()} is in the past; choose a "
                                     "moment from now on (T2)", "T2"))
        if start_at is not None:
            errors.append(FieldError("start_at", "give start_at or send_at, not both: the chosen "
                                     "send moment is the campaign start (T1)", "T1"))
    if start_at is not None and start_at < now:
        errors.append(FieldError("start_at", f"{start_at.isoformat()} is in the past; leave it "
                                 "out to start now"))
    return errors


def launch(session: Session, user: User, campaign: Campaign, contact_ids: Sequence[int], *,
           start_at: datetime | None = None, send_at: datetime | None = None,
           now: datetime | None = None) -> LaunchResult:
    """Add the user's contacts to a campaign and activate each person's first step.

    Raises Invalid when anything is wrong (nothing stored); contacts already in the campaign
    are reported, not added twice. The plan is computed once and shared, since it depends
    only on the campaign and the start (T1), never on who else is launched.
    """
    now = now or utcnow()
    if campaign.status is CampaignStatus.ENDED:
        raise Conflict("the campaign has ended; people can no longer be added")
    ids = list(dict.fromkeys(contact_ids))
    errors = check_launch(campaign, ids, start_at, send_at, now)
    if errors:
        raise Invalid(errors)

    contacts: dict[int, Contact] = {}
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        contacts.update((c.id, c) for c in session.execute(
            select(Contact.id, Contact.email, Contact.first_name, Contact.last_name)
            .where(Contact.id.in_(chunk), Contact.owner_id == user.id)))
    unknown = [c for c in ids if c not in contacts]
    if unknown:
        errors.append(FieldError("contact_ids", "unknown contacts: " + _list(unknown)))
    has_email_step = any(s.type is StepType.EMAIL for s in campaign.steps)
    no_email = [c for c in ids if c in contacts and not contacts[c].email]
    if has_email_step and no_email:
        errors.append(FieldError("contact_ids", "these contacts have no email address, which "
                                 "the campaign's email steps need: " + _list(no_email)))
    if errors:
        raise Invalid(errors)

    already: set[int] = set()
    for i in range(0, len(ids), _CHUNK):
        already.update(session.scalars(select(Enrollment.contact_id).where(
            Enrollment.campaign_id == campaign.id, Enrollment.contact_id.in_(ids[i:i + _CHUNK]))))
    new_ids = [c for c in ids if c not in already]
    start = start_at or now
    result = LaunchResult(already_enrolled=[c for c in ids if c in already],
                          start=send_at or start, scheduled=start > now)
    if not new_ids:
        return result

    specs = step_specs(campaign.steps)
    planned = plan(specs, settings_of(campaign), start, send_at=send_at)
    status = EnrollmentStatus.SCHEDULED if start > now else EnrollmentStatus.ACTIVE
    enrollment_rows = session.execute(
        insert(Enrollment).returning(Enrollment.id, Enrollment.contact_id,
                                     sort_by_parameter_order=True),
        [dict(org_id=user.org_id, campaign_id=campaign.id, contact_id=c, owner_id=user.id,
              start_at=start, send_at=send_at, status=status, created_at=now) for c in new_ids],
    ).all()
    result.enrolled = [(r[0], r[1]) for r in enrollment_rows]

    first_status = StepStatus.ACTIVE if status is EnrollmentStatus.ACTIVE else StepStatus.PENDING
    first_step = campaign.steps[0]
    first_rows = session.execute(
        insert(EnrollmentStep).returning(EnrollmentStep.id, sort_by_parameter_order=True),
        [dict(enrollment_id=e, step_id=first_step.id, position=0, status=first_status,
              planned_at=planned[0].due_at) for e, _ in result.enrolled],
    ).scalars().all()
    later = [dict(enrollment_id=e, step_id=step.id, position=step.position,
                  status=StepStatus.PENDING, planned_at=planned[step.position].due_at)
             for e, _ in result.enrolled for step in campaign.steps[1:]]
    if later:
        session.execute(insert(EnrollmentStep), later)

    feed = [dict(org_id=user.org_id, owner_id=user.id, kind=EventKind.PERSON_ADDED,
                 summary=f"{contact_name(contacts[c])} added to {campaign.name}",
                 data={"campaign_id": campaign.id, "enrollment_id": e, "contact_id": c,
                       "start": result.start.isoformat() if result.start else None})
            for e, c in result.enrolled]
    if status is EnrollmentStatus.ACTIVE:
        feed += _queue_first_steps(session, campaign, specs, result.enrolled, first_rows,
                                   contacts, user, planned[0].due_at)
    record_many(session, feed)
    session.flush()
    return result


def _queue_first_steps(session: Session, campaign: Campaign, specs: list, enrolled: list,
                       first_rows: Sequence[int], contacts: dict, user: User,
                       due_at: datetime) -> list[dict]:
    step_no = steps_in_day(campaign.steps)[0]
    model = None
    rows, feed = [], []
    for (enrollment_id, contact_id), es_id in zip(enrolled, first_rows, strict=True):
        model, row, event = queue_rows(
            campaign, campaign.steps[0], specs[0], step_no,
            {"id": enrollment_id, "owner_id": user.id}, contacts[contact_id], es_id, due_at)
        rows.append(row)
        feed.append(event)
    assert model is not None
    ids = session.execute(insert(model).returning(model.id, sort_by_parameter_order=True),
                          rows).scalars().all()
    key = "task_id" if model.__name__ == "Task" else "send_id"
    for event, row_id in zip(feed, ids, strict=True):
        event["data"][key] = row_id
    return feed


def _list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
