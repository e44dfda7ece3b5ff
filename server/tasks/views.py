"""Command Center endpoints: list, read, complete and skip tasks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint
from pydantic import AwareDatetime, Field

from server.accounts.auth import api_user
from server.api.errors import FieldError, not_found
from server.api.operations import Model, OneLine, Out, Query, operation
from server.campaigns.spec import StepType
from server.db import get_session, utcnow
from server.errors import Invalid
from server.tasks import service
from server.tasks.models import CompletedVia, Task, TaskStatus

bp = Blueprint("tasks", __name__, url_prefix="/api/tasks")


class TaskContact(Out):
    """Who the task is about."""

    id: int
    email: str | None
    name: str
    company: str


class TaskCampaign(Out):
    """The campaign that made the task."""

    id: int
    name: str


class TaskOut(Out):
    """A task in the Command Center."""

    id: int
    type: StepType
    status: TaskStatus
    title: str
    notes: str
    priority: str
    campaign: TaskCampaign
    contact: TaskContact
    enrollment_id: int
    day: int
    step: int = Field(description="the step's number within its day")
    due_at: datetime
    due_local: datetime = Field(description="due moment in the rep's time zone")
    completed_at: datetime | None
    sent_at: datetime | None
    message_id: str | None
    via: CompletedVia | None
    opened_at: datetime | None = Field(description="first opened in a compose window")
    opened_via: CompletedVia | None


class TaskList(Out):
    """A page of tasks, soonest due first."""

    items: list[TaskOut]
    total: int
    page: int
    per_page: int
    next_page: int | None


class TaskQuery(Query):
    """Command Center filters; ``due`` windows are in the rep's time zone."""

    due: service.Due = service.Due.ALL
    type: StepType | None = None
    campaign_id: int | None = None
    status: TaskStatus = TaskStatus.OPEN
    page: int = Field(1, ge=1)
    per_page: int = Field(50, ge=1, le=200)


class CompleteIn(Model):
    """How a task was completed. ``sent_at`` is when an email task's email really left."""

    sent_at: AwareDatetime | None = None
    message_id: OneLine | None = Field(None, max_length=998)
    via: CompletedVia = CompletedVia.WEB


class SkipIn(Model):
    """Skipping takes no options."""


class OpenedIn(Model):
    """Where the rep opened the email task's compose window."""

    via: CompletedVia


class TaskAction(Out):
    """The task after the action, and whether this request changed it."""

    changed: bool
    task: TaskOut


def task_out(row: Any, tz: str) -> TaskOut:
    """Serialise a task row (from the service's column list) for a rep in ``tz``."""
    name = f"{row.first_name} {row.last_name}".strip() or (row.contact_email or "")
    return TaskOut(
        id=row.id, type=row.type, status=row.status, title=row.title, notes=row.notes,
        priority=row.priority, campaign=TaskCampaign(id=row.campaign_id, name=row.campaign_name),
        contact=TaskContact(id=row.contact_id, email=row.contact_email, name=name,
                            company=row.company),
        enrollment_id=row.enrollment_id, day=row.day, step=row.step_in_day, due_at=row.due_at,
        due_local=row.due_at.astimezone(ZoneInfo(tz)), completed_at=row.completed_at,
        sent_at=row.sent_at, message_id=row.message_id, via=row.via,
        opened_at=row.opened_at, opened_via=row.opened_via,
    )


def _read(task_id: int) -> TaskOut:
    user = api_user()
    row = service.get_task_row(get_session(), user, task_id)
    if row is None:
        raise not_found("task")
    return task_out(row, user.timezone)


@operation(bp, "", "GET", query=TaskQuery, response=TaskList)
def list_(query: TaskQuery) -> TaskList:
    """List the caller's tasks, filtered by due window, type, campaign and status."""
    user = api_user()
    flt = service.TaskFilter(**query.model_dump())
    rows, total = service.list_tasks(get_session(), user, flt, utcnow())
    get_session().commit()
    more = query.page * query.per_page < total
    return TaskList(items=[task_out(r, user.timezone) for r in rows], total=total,
                    page=query.page, per_page=query.per_page,
                    next_page=query.page + 1 if more else None)


@operation(bp, "/<int:task_id>", "GET", response=TaskOut)
def read(task_id: int) -> TaskOut:
    """Read one of the caller's tasks."""
    out = _read(task_id)
    get_session().commit()
    return out


@operation(bp, "/<int:task_id>/complete", "POST", body=CompleteIn, response=TaskAction)
def complete(task_id: int, body: CompleteIn) -> TaskAction:
    """Complete a task; the person's campaign moves on. Doing it twice is harmless."""
    _read(task_id)
    now = utcnow()
    if body.sent_at is not None:
        task = get_session().get(Task, task_id)
        assert task is not None
        # The task stands for its step from its due moment or its creation, whichever came
        # first (a task made late, T7 keep, is due before it exists).
        created = min(task.created_at, task.due_at)
        # A minute of leeway either way for clocks that differ (the add-ins').
        if body.sent_at > now + timedelta(minutes=1):
            raise Invalid([FieldError("sent_at", "is in the future (T9)", "T9")])
        if body.sent_at < created - timedelta(minutes=1):
            raise Invalid([FieldError("sent_at", f"is before the task was created "
                                      f"({created.isoformat()}) (T9)", "T9")])
    changed = service.complete_task(get_session(), api_user(), task_id, now=now,
                                    sent_at=body.sent_at, message_id=body.message_id,
                                    via=body.via)
    get_session().commit()
    return TaskAction(changed=changed, task=_read(task_id))


@operation(bp, "/<int:task_id>/skip", "POST", body=SkipIn, response=TaskAction)
def skip(task_id: int, body: SkipIn) -> TaskAction:
    """Skip a task; the person's campaign moves on. Doing it twice is harmless."""
    _read(task_id)
    changed = service.skip_task(get_session(), api_user(), task_id, now=utcnow())
    get_session().commit()
    return TaskAction(changed=changed, task=_read(task_id))


@operation(bp, "/<int:task_id>/opened", "POST", body=OpenedIn, response=TaskAction)
def opened(task_id: int, body: OpenedIn) -> TaskAction:
    """Record that the rep opened the task in a compose window; the first open is kept."""
    _read(task_id)
    changed = service.record_opened(get_session(), api_user(), task_id, body.via,
                                    now=utcnow())
    get_session().commit()
    return TaskAction(changed=changed, task=_read(task_id))
