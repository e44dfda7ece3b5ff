"""The Command Center: listing a rep's tasks, completing and skipping them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Row, func, select, update
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.campaigns.models import Campaign, StepStatus
from server.campaigns.progress import step_finished
from server.campaigns.spec import StepType
from server.contacts.models import Contact
from server.errors import Conflict
from server.feed.models import EventKind
from server.feed.service import record
from server.salesforce import enqueue as salesforce
from server.tasks.models import CompletedVia, Task, TaskStatus


class Due(enum.StrEnum):
    """Due-date filters, in the rep's time zone."""

    OVERDUE = "overdue"
    TODAY = "today"
    TOMORROW = "tomorrow"
    NEXT7 = "next7"
    ALL = "all"


def due_window(due: Due, tz: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The [start, end) UTC window of a due filter for a rep in ``tz`` at ``now``.

    ``overdue`` is before the start of the rep's today; ``next7`` is today and the six days after.
    """
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()

    def midnight(days: int) -> datetime:
        return datetime.combine(today + timedelta(days=days), time(0), zone).astimezone(
            now.tzinfo)

    return {
        Due.OVERDUE: (None, midnight(0)),
        Due.TODAY: (midnight(0), midnight(1)),
        Due.TOMORROW: (midnight(1), midnight(2)),
        Due.NEXT7: (midnight(0), midnight(7)),
        Due.ALL: (None, None),
    }[due]


@dataclass(frozen=True)
class TaskFilter:
    """What the Command Center asks for."""

    due: Due = Due.ALL
    type: StepType | None = None
    campaign_id: int | None = None
    status: TaskStatus = TaskStatus.OPEN
    page: int = 1
    per_page: int = 50


_COLUMNS = (
    Task.id, Task.type, Task.status, Task.title, Task.notes, Task.priority, Task.day,
    Task.step_in_day, Task.due_at, Task.completed_at, Task.sent_at, Task.via,
    Task.campaign_id, Task.contact_id, Task.enrollment_id, Task.message_id,
    Task.opened_at, Task.opened_via,
    Campaign.name.label("campaign_name"), Contact.email.label("contact_email"),
    Contact.first_name, Contact.last_name, Contact.company,
)


def acts_on(user: User) -> ColumnElement[bool]:
    """The tasks ``user`` may read and act on by id: their own; an admin, any of their org's.

    The queue (:func:`list_tasks`) stays the caller's own tasks (README, Security).
    """
    if user.role is Role.ADMIN:
        return Task.org_id == user.org_id
    return Task.owner_id == user.id


def list_tasks(session: Session, user: User, flt: TaskFilter,
               now: datetime) -> tuple[list[Row[Any]], int]:
    """One page of the rep's tasks (soonest due first) and the total matching the filter."""
    cond = [Task.owner_id == user.id, Task.status == flt.status]
    start, end = due_window(flt.due, user.timezone, now)
    if start is not None:
        cond.append(Task.due_at >= start)
    if end is not None:
        cond.append(Task.due_at < end)
    if flt.type is not None:
        cond.append(Task.type == flt.type)
    if flt.campaign_id is not None:
        cond.append(Task.campaign_id == flt.campaign_id)
    total = session.scalar(select(func.count()).select_from(Task).where(*cond)) or 0
    rows = session.execute(
        select(*_COLUMNS)
        .join(Campaign, Campaign.id == Task.campaign_id)
        .join(Contact, Contact.id == Task.contact_id)
        .where(*cond)
        .order_by(Task.due_at, Task.id)
        .limit(flt.per_page).offset((flt.page - 1) * flt.per_page)
    ).all()
    return list(rows), total


def get_task_row(session: Session, user: User, task_id: int) -> Row[Any] | None:
    """A task the user may act on (:func:`acts_on`) with its campaign and contact, or None."""
    return session.execute(
        select(*_COLUMNS)
        .join(Campaign, Campaign.id == Task.campaign_id)
        .join(Contact, Contact.id == Task.contact_id)
        .where(Task.id == task_id, acts_on(user))
    ).first()


def _finish(session: Session, user: User, task_id: int, status: TaskStatus,
            values: dict[str, Any], now: datetime) -> bool:
    """Move an open task to ``status``; True if this call did it, False if it was already so."""
    changed = session.execute(
        update(Task)
        .where(Task.id == task_id, acts_on(user), Task.status == TaskStatus.OPEN)
        .values(status=status, completed_at=now, **values)
    ).rowcount
    if changed:
        return True
    current = session.scalar(select(Task.status).where(Task.id == task_id, acts_on(user)))
    if current is None:
        return False
    if current is status:
        return False
    raise Conflict(f"the task is already {current.value}")


def _close(session: Session, user: User, task_id: int, status: TaskStatus,
           values: dict[str, Any], done_at: datetime, now: datetime,
           event: tuple[EventKind, str, dict[str, Any]]) -> bool:
    """Finish an open task once: record the feed event and move the person on (T5).

    Any unclaimed email of the task still waiting in the outbox is withdrawn first, whoever
    closes the task (web, add-ins, API): the rep sent it by hand or skipped it, so it must
    not go out as well. One the sender has already claimed is a Conflict.
    """
    from server.sending.schedule import TaskNotFound, cancel_task_send

    verb = "marked as sent by hand" if status is TaskStatus.DONE else "task skipped"
    try:
        cancel_task_send(session, user, task_id, reason=verb, now=now)
    except TaskNotFound:
        return False
    if not _finish(session, user, task_id, status, values, now):
        return False
    task = session.get(Task, task_id)
    assert task is not None
    kind, verb, extra = event
    record(session, org_id=task.org_id, owner_id=task.owner_id, kind=kind,
           summary=f"{verb}: {task.title}",
           data={"task_id": task.id, "campaign_id": task.campaign_id,
                 "contact_id": task.contact_id, **extra})
    step_status = StepStatus.DONE if status is TaskStatus.DONE else StepStatus.SKIPPED
    step_finished(session, task.enrollment_step_id, step_status, done_at, now)
    salesforce.task_closed(session, task, now)  # Salesforce sync (issue 7)
    return True


def complete_task(session: Session, user: User, task_id: int, *, now: datetime,
                  sent_at: datetime | None = None, message_id: str | None = None,
                  via: CompletedVia = CompletedVia.WEB) -> bool:
    """Complete a task and advance the person's campaign (T5). Completing twice is harmless.

    For an email task, ``sent_at`` is when the rep really sent it: a later
    ``same_as_previous`` email takes its time of day from it (T3).
    """
    return _close(session, user, task_id, TaskStatus.DONE,
                  {"sent_at": sent_at, "message_id": message_id, "via": via},
                  sent_at or now, now,
                  (EventKind.TASK_COMPLETED, "Done",
                   {"via": via.value, "sent_at": sent_at.isoformat() if sent_at else None}))


def skip_task(session: Session, user: User, task_id: int, *, now: datetime) -> bool:
    """Skip a task and advance the person's campaign (T5). Skipping twice is harmless."""
    return _close(session, user, task_id, TaskStatus.SKIPPED, {}, now, now,
                  (EventKind.TASK_SKIPPED, "Skipped", {}))


def record_opened(session: Session, user: User, task_id: int, via: CompletedVia, *,
                  now: datetime) -> bool:
    """Record that the rep opened an email task in a compose window (web, Gmail, Outlook).

    The first open of an open task sets ``opened_at``/``opened_via`` and writes one Live Feed
    event; opening it again (or Google replaying an add-on action) changes nothing and returns
    False. Another rep's task, or a missing one, is a ``LookupError``.
    """
    changed = session.execute(
        update(Task)
        .where(Task.id == task_id, acts_on(user), Task.opened_at.is_(None),
               Task.status == TaskStatus.OPEN)
        .values(opened_at=now, opened_via=via)
    ).rowcount
    if not changed:
        if session.scalar(select(Task.id).where(Task.id == task_id, acts_on(user))) is None:
            raise LookupError(f"task {task_id} not found")
        return False
    task = session.get(Task, task_id)
    assert task is not None
    record(session, org_id=task.org_id, owner_id=task.owner_id, kind=EventKind.TASK_OPENED,
           summary=f"Opened in {via.value.capitalize()}: {task.title}",
           data={"task_id": task.id, "campaign_id": task.campaign_id,
                 "contact_id": task.contact_id, "via": via.value})
    return True
