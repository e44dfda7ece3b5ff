"""Putting Salesforce work in the sync outbox, in the caller's transaction.

Every function is cheap when the org has no Salesforce connection (one indexed look-up, or a
join that finds nothing), and each item has a unique ``external_key``, so enqueueing the same
thing twice (a replayed hook, two code paths for one email) stores it once. The campaign code
calls :func:`tasks_created` for the tasks it inserts (one ``INSERT … SELECT`` for a whole bulk
launch), task completion calls :func:`task_completed` or :func:`email_sent`, and the sending
code calls :func:`email_sent` and :func:`reply_detected`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, any_, bindparam, cast, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.campaigns.spec import StepType
from server.db import UTCDateTime
from server.salesforce.mapping import excerpt
from server.salesforce.models import (
    ConnectionStatus,
    SalesforceConnection,
    SyncItem,
    SyncKind,
    SyncStatus,
)
from server.sending.models import ScheduledSend
from server.tasks.models import Task, TaskStatus

_CHUNK = 5_000


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT DO NOTHING``."""
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(SyncItem)


def _enabled() -> Any:
    """Orgs that sync: a connection row that an admin has not disconnected (or never made)."""
    return SalesforceConnection.status != ConnectionStatus.DISCONNECTED


def _org_syncs(session: Session, org_id: int) -> bool:
    return session.scalar(select(SalesforceConnection.id).where(
        SalesforceConnection.org_id == org_id, _enabled())) is not None


def _at(moment: datetime) -> Any:
    """A timestamp literal bound the way UTC columns store it."""
    return literal(moment, UTCDateTime())


def task_key(task_id: int) -> str:
    """The external key of the Salesforce Task made for a Relay task."""
    return f"task-{task_id}"


def tasks_created(session: Session, task_ids: Sequence[int], now: datetime, *,
                  org_id: int | None = None) -> int:
    """Queue a Salesforce Task for each new campaign task of a syncing org; how many queued.

    One ``INSERT … SELECT`` for all of ``task_ids`` (chunked on SQLite): email tasks always
    sync, call/InMail/custom reminder tasks only when the org turned ``sync_reminders`` on.
    Given the tasks' ``org_id``, an org that does not sync costs one indexed look-up.
    """
    if not task_ids or (org_id is not None and not _org_syncs(session, org_id)):
        return 0
    pg = session.get_bind().dialect.name == "postgresql"
    key = literal("task-", String) + cast(Task.id, String)
    if pg:
        chunks: list[Any] = [Task.id == any_(bindparam(None, list(task_ids),
                                                       type_=postgresql.ARRAY(Integer)))]
    else:
        ids = list(task_ids)
        chunks = [Task.id.in_(ids[i:i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]
    queued = 0
    for among in chunks:
        source = (
            select(Task.org_id, literal(SyncKind.TASK.value), literal(SyncStatus.PENDING.value),
                   key, Task.id, _at(now), _at(now), _at(now), literal(0))
            .join(SalesforceConnection, SalesforceConnection.org_id == Task.org_id)
            .where(among, _enabled(),
                   or_(Task.type == StepType.EMAIL, SalesforceConnection.sync_reminders))
        )
        stmt = _insert(session).from_select(
            ["org_id", "kind", "status", "external_key", "task_id", "due_at", "created_at",
             "updated_at", "attempts"], source).on_conflict_do_nothing(
            index_elements=["external_key"])
        queued += max(session.execute(stmt).rowcount or 0, 0)
    return queued


def task_created(session: Session, task_id: int, now: datetime, *,
                 org_id: int | None = None) -> int:
    """Queue the Salesforce Task of one new campaign task (see :func:`tasks_created`)."""
    return tasks_created(session, [task_id], now, org_id=org_id)


def task_completed(session: Session, task_id: int, now: datetime) -> int:
    """Queue "Status = Completed" for a task that was queued to sync, unless Salesforce did it.

    Skipping a task queues nothing: a skipped task is not completed in Salesforce.
    """
    created = SyncItem.__table__.alias("created")
    source = (
        select(created.c.org_id, literal(SyncKind.COMPLETE.value),
               literal(SyncStatus.PENDING.value), literal(f"complete-{task_id}"),
               created.c.task_id, _at(now), _at(now), _at(now), literal(0))
        .where(created.c.task_id == task_id, created.c.kind == SyncKind.TASK.value,
               created.c.remote_completed_at.is_(None))
    )
    stmt = _insert(session).from_select(
        ["org_id", "kind", "status", "external_key", "task_id", "due_at", "created_at",
         "updated_at", "attempts"], source).on_conflict_do_nothing(
        index_elements=["external_key"]).returning(SyncItem.id)
    return len(session.execute(stmt).all())


def _queue(session: Session, *, org_id: int, kind: SyncKind, key: str, now: datetime,
           task_id: int | None = None, send_id: int | None = None,
           payload: dict[str, Any]) -> int:
    stmt = _insert(session).values(
        org_id=org_id, kind=kind, status=SyncStatus.PENDING, external_key=key, task_id=task_id,
        send_id=send_id, payload=payload, due_at=now, created_at=now, updated_at=now,
        attempts=0).on_conflict_do_nothing(index_elements=["external_key"]
                                           ).returning(SyncItem.id)
    return len(session.execute(stmt).all())


def email_sent(session: Session, source: ScheduledSend | Task, now: datetime, *,
               subject: str | None = None, body_text: str | None = None,
               sent_at: datetime | None = None) -> int:
    """Queue the completed "Email" activity of a sent email; 1 if queued, 0 if not.

    ``source`` is the automatic send marked ``sent`` or the email task the rep completed with
    its ``sent_at``. A task's email completes the task's own Salesforce Task (as Type Email)
    when that task synced, so one email is one activity; otherwise a new Task is created.
    A send that belongs to a task is the same activity as the task's (same key). ``subject``
    and ``body_text`` default to the send's; for a task without a send, the task's title.
    """
    if not _org_syncs(session, source.org_id):
        return 0
    if isinstance(source, ScheduledSend):
        send: ScheduledSend | None = source
        task_id = source.task_id
        campaign_id = source.campaign_id
    else:
        task_id = source.id
        campaign_id = source.campaign_id
        send = session.scalar(select(ScheduledSend).where(ScheduledSend.task_id == source.id)
                              .order_by(ScheduledSend.id.desc()).limit(1))
    task = session.get(Task, task_id) if task_id is not None else None
    when = sent_at or (send.sent_at if send is not None else None) or (
        task.sent_at if task is not None else None) or now
    payload = {
        "owner_id": source.owner_id, "contact_id": source.contact_id,
        "campaign_id": campaign_id,
        "subject": subject if subject is not None else (
            send.subject if send is not None and send.subject else (
                task.title if task is not None else "")),
        "excerpt": excerpt(body_text if body_text is not None else (
            send.text if send is not None else "")),
        "at": when.isoformat(),
        "day": task.day if task is not None else None,
        "step": task.step_in_day if task is not None else None,
    }
    if task_id is not None:
        key = f"email-task-{task_id}"
    else:
        assert send is not None
        key = f"email-send-{send.id}"
        payload.update(_send_step(session, send))
    return _queue(session, org_id=source.org_id, kind=SyncKind.EMAIL, key=key, now=now,
                  task_id=task_id, send_id=send.id if send is not None else None,
                  payload=payload)


def _send_step(session: Session, send: ScheduledSend) -> dict[str, Any]:
    """The day and step-in-day of an automatic send's campaign step."""
    if send.enrollment_step_id is None:
        return {}
    from server.campaigns.models import Campaign, EnrollmentStep
    from server.campaigns.service import steps_in_day

    row = session.get(EnrollmentStep, send.enrollment_step_id)
    campaign = session.get(Campaign, send.campaign_id) if send.campaign_id else None
    if row is None or campaign is None:
        return {}
    return {"day": campaign.steps[row.position].day,
            "step": steps_in_day(campaign.steps)[row.position]}


def reply_detected(session: Session, *, org_id: int, owner_id: int, contact_id: int,
                   subject: str, message_id: str, received_at: datetime, now: datetime,
                   body_text: str | None = None, campaign_id: int | None = None) -> int:
    """Queue the "Reply: <subject>" activity of a reply detected in the rep's mailbox.

    ``message_id`` (the reply's own Message-ID) keys it, so detecting it twice queues once.
    """
    if not _org_syncs(session, org_id):
        return 0
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:40]
    return _queue(session, org_id=org_id, kind=SyncKind.REPLY, key=f"reply-{digest}", now=now,
                  payload={"owner_id": owner_id, "contact_id": contact_id,
                           "campaign_id": campaign_id, "subject": subject,
                           "excerpt": excerpt(body_text), "at": received_at.isoformat()})




def task_closed(session: Session, task: Task, now: datetime) -> int:
    """The Salesforce side of closing a task: its completion, or its email's activity.

    A done email task that was sent (``sent_at``) becomes the email activity; any other done
    task is completed; a skipped or cancelled task queues nothing.
    """
    if task.status is not TaskStatus.DONE:
        return 0
    if task.type is StepType.EMAIL and task.sent_at is not None:
        return email_sent(session, task, now)
    return task_completed(session, task.id, now)
