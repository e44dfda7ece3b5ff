"""Outlook add-in operations: Microsoft identity links and "sending" reports of tasks."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.addins.outlook.entra import EntraIdentity
from server.addins.outlook.models import MicrosoftIdentity, TaskSendReport
from server.campaigns.spec import StepType
from server.errors import Conflict
from server.feed.models import EventKind
from server.feed.service import record
from server.tasks.models import Task, TaskStatus

#: The internet header the task pane stamps on a message it filled (Mailbox 1.8).
TASK_HEADER = "x-relay-task"

#: How often the last-seen time of a Microsoft identity is written at most.
_SEEN_RESOLUTION_SECONDS = 300


def tagged_task_id(headers: dict[str, str]) -> int | None:
    """The old numeric task id a message's internet headers carry (``x-relay-task: <id>``).

    Messages tagged before opaque tags existed; a tag is read with
    :func:`server.tasks.tags.task_id_of`. Header names are case-insensitive.
    """
    for name, value in headers.items():
        if name.lower() == TASK_HEADER and re.fullmatch(r"\s*\d{1,15}\s*", value or ""):
            return int(value)
    return None


def tag_for_own_task(session: Session, user: User, task_id: int) -> str:
    """The opaque ``x-relay-task`` tag of one of ``user``'s email tasks (LookupError if not)."""
    from server.tasks.tags import tag_for_task

    found = session.scalar(select(Task.id).where(Task.id == task_id, Task.owner_id == user.id,
                                                 Task.type == StepType.EMAIL))
    if found is None:
        raise LookupError(f"task {task_id} not found")
    return tag_for_task(session, task_id)


def user_for_identity(session: Session, identity: EntraIdentity, now: datetime) -> User | None:
    """The Relay user linked to a Microsoft identity (tid + oid), or None."""
    row = session.execute(
        select(User, MicrosoftIdentity.id, MicrosoftIdentity.last_seen_at)
        .join(MicrosoftIdentity, MicrosoftIdentity.user_id == User.id)
        .where(MicrosoftIdentity.tid == identity.tid, MicrosoftIdentity.oid == identity.oid)
    ).first()
    if row is None:
        return None
    user, link_id, seen = row
    if seen is None or (now - seen).total_seconds() > _SEEN_RESOLUTION_SECONDS:
        session.execute(update(MicrosoftIdentity).where(MicrosoftIdentity.id == link_id)
                        .values(last_seen_at=now))
    return user


def link_identity(session: Session, user: User, identity: EntraIdentity,
                  now: datetime) -> bool:
    """Link a Microsoft identity to ``user``; True if it is new, False if it already was.

    An identity linked to another Relay user is a Conflict: unlinking is an admin's job.
    """
    link = session.scalar(select(MicrosoftIdentity).where(
        MicrosoftIdentity.tid == identity.tid, MicrosoftIdentity.oid == identity.oid))
    if link is not None:
        if link.user_id != user.id:
            raise Conflict("this Microsoft account is already linked to another Relay user")
        return False
    session.add(MicrosoftIdentity(tid=identity.tid, oid=identity.oid, user_id=user.id,
                                  username=identity.username[:320], last_seen_at=now))
    session.flush()
    return True


def report_sending(session: Session, user: User, task_id: int, now: datetime) -> bool:
    """Record that Outlook is sending a message tagged with one of the rep's email tasks.

    The first report of a task writes a Live Feed event; later ones (a resend, a retry) only
    count. Returns True for the first. Another rep's task or a missing one is a
    ``LookupError``; a call or custom task, or a closed one, is a Conflict.
    """
    task = session.scalar(select(Task).where(Task.id == task_id, Task.owner_id == user.id))
    if task is None:
        raise LookupError(f"task {task_id} not found")
    if task.type is not StepType.EMAIL:
        raise Conflict("only email tasks are sent")
    report = session.get(TaskSendReport, task_id)
    if report is not None:
        report.last_reported_at = now
        report.reports += 1
        return False
    if task.status is not TaskStatus.OPEN:
        raise Conflict(f"the task is already {task.status.value}")
    session.add(TaskSendReport(task_id=task_id, first_reported_at=now, last_reported_at=now,
                               reports=1))
    record(session, org_id=task.org_id, owner_id=task.owner_id, kind=EventKind.TASK_SENDING,
           summary=f"Sending from Outlook: {task.title}",
           data={"task_id": task.id, "campaign_id": task.campaign_id,
                 "contact_id": task.contact_id, "via": "outlook"})
    session.flush()
    return True
