"""Putting a rep's edited email task into the scheduled-send outbox (Send now / Schedule).

An email task stays *open* while its email waits in the outbox: the task is done when the
email has really left (the dispatcher of the sending issue completes it). One task has at most
one live send: scheduling again replaces the unclaimed row instead of adding a second one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.api.errors import FieldError
from server.campaigns.models import Campaign
from server.campaigns.spec import StepType
from server.compose.render import html_to_text, sanitise_html
from server.contacts.models import Contact
from server.errors import Conflict, Invalid
from server.feed.models import EventKind
from server.feed.service import record
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus

#: Sends the Command Center lists under *Scheduled* (waiting or on their way).
ACTIVE = (SendStatus.SCHEDULED, SendStatus.CLAIMED, SendStatus.DRAFTED, SendStatus.SENDING)
#: Sends listed under *Failed*, with their reason.
FAILED = (SendStatus.FAILED, SendStatus.NEEDS_ATTENTION)

#: A field prompt, ``{{! Introduce yourself}}`` (E6); an opening ``{{!`` alone is enough to
#: refuse, so a half-deleted prompt cannot slip through.
PROMPT = re.compile(r"\{\{\s*!")
#: Clock tolerance for "send now" and a schedule to the current minute.
PAST_TOLERANCE = timedelta(minutes=1)
MAX_HTML = 256 * 1024
MAX_SUBJECT = 998


class TaskNotFound(LookupError):
    """No such task for this rep (another rep's task is not found either)."""


def has_prompt(*parts: str | None) -> bool:
    """True when any part still contains a field prompt ``{{! …}}`` (E6)."""
    return any(part and PROMPT.search(part) for part in parts)


def mailbox_connected(session: Session, user: User) -> bool:
    """Whether the rep has connected a mailbox (a daily-limit pause still counts)."""
    from server.mailboxes.lifecycle import MailboxStatus, get_mailbox

    mb = get_mailbox(session, user.id)
    return mb is not None and mb.status is MailboxStatus.CONNECTED


def _lock_task(session: Session, user: User, task_id: int, *, admin_ok: bool = False) -> Task:
    """The rep's task, locked so that two schedules of it cannot both insert a row.

    ``admin_ok``: an admin of the org may close any of its tasks (the sharing policy).
    """
    from server.tasks.service import acts_on

    task = session.scalar(
        select(Task).where(Task.id == task_id,
                           acts_on(user) if admin_ok else Task.owner_id == user.id)
        .with_for_update().execution_options(populate_existing=True)
    )
    if task is None:
        raise TaskNotFound(task_id)
    return task


def _validate(task: Task, contact: Contact, *, subject: str, html: str, text: str,
              send_at: datetime, now: datetime) -> None:
    """Every reason the email cannot go into the outbox, one error per field."""
    if task.type is not StepType.EMAIL:
        raise Invalid([FieldError("task_id", f"is a {task.type.value} task; only email tasks "
                                             "have an email to send")])
    if task.status is not TaskStatus.OPEN:
        raise Conflict(f"the task is already {task.status.value}")
    errors: list[FieldError] = []
    if not contact.email:
        errors.append(FieldError("to", f"{contact.first_name or 'the contact'} has no email "
                                       "address; add one to the contact first"))
    if "\r" in subject or "\n" in subject:
        errors.append(FieldError("subject", "may not contain a line break (CR or LF)"))
    elif not subject.strip():
        errors.append(FieldError("subject", "may not be empty"))
    elif len(subject) > MAX_SUBJECT:
        errors.append(FieldError("subject", f"is longer than {MAX_SUBJECT} characters"))
    if len(html) > MAX_HTML:
        errors.append(FieldError("html", "is larger than 256 KB"))
    elif not text.strip():
        errors.append(FieldError("html", "the email has no text"))
    for name, value in (("subject", subject), ("html", html), ("text", text)):
        if has_prompt(value) and not any(e.field == name for e in errors):
            errors.append(FieldError(name, "a field prompt {{! …}} remains; replace it with "
                                           "your own words before sending", "E6"))
    if send_at.tzinfo is None:
        errors.append(FieldError("send_at", "needs a time zone"))
    elif send_at < now - PAST_TOLERANCE:
        errors.append(FieldError("send_at", "is in the past; choose a later moment"))
    if errors:
        raise Invalid(errors)


def schedule_task_email(session: Session, user: User, task_id: int, *, subject: str,
                        html: str, text: str | None = None, send_at: datetime,
                        now: datetime) -> ScheduledSend:
    """Put the rep's edited email for an open email task into the outbox, due at ``send_at``.

    Refused (``Invalid``, naming the field) while a field prompt remains (E6), for a subject
    with CR or LF, a moment in the past, an empty body or a contact without an address; a task
    that is no longer open is a ``Conflict``; another rep's task is ``TaskNotFound``. The HTML
    is sanitised to the email-safe allowlist; ``text`` defaults to one derived from it.
    Scheduling again replaces the task's unclaimed send; one already claimed by the sender is
    a ``Conflict``. Records a ``send.scheduled`` feed event. The caller commits.
    """
    task = _lock_task(session, user, task_id)
    contact = session.get(Contact, task.contact_id)
    assert contact is not None
    if len(html) > MAX_HTML:
        raise Invalid([FieldError("html", "is larger than 256 KB")])
    clean = sanitise_html(html)
    # The plain-text part is derived from the HTML unless the rep wrote their own.
    plain = html_to_text(clean) if text is None or not text.strip() else text
    _validate(task, contact, subject=subject, html=clean, text=plain, send_at=send_at, now=now)
    send_at = max(send_at, now).astimezone(UTC)
    existing = session.scalars(
        select(ScheduledSend).where(ScheduledSend.task_id == task.id,
                                    ScheduledSend.status.in_(ACTIVE))
        .order_by(ScheduledSend.id).with_for_update()
    ).all()
    if any(s.status is not SendStatus.SCHEDULED for s in existing):
        raise Conflict("the email is already being sent; it can no longer be changed")
    values = dict(to_email=contact.email or "", subject=subject, html=clean, text=plain,
                  due_at=send_at, reason=None, updated_at=now)
    if existing:
        send = existing[0]
        for key, value in values.items():
            setattr(send, key, value)
        verb = "rescheduled"
    else:
        send = ScheduledSend(org_id=task.org_id, owner_id=task.owner_id,
                             campaign_id=task.campaign_id, enrollment_id=task.enrollment_id,
                             enrollment_step_id=None, task_id=task.id, contact_id=contact.id,
                             status=SendStatus.SCHEDULED, created_at=now, **values)
        session.add(send)
        verb = "scheduled"
    session.flush()
    record(session, org_id=task.org_id, owner_id=task.owner_id, kind=EventKind.SEND_SCHEDULED,
           summary=f"Email to {contact.email} {verb} for {send_at:%Y-%m-%d %H:%M} UTC — "
                   f"{task.title}",
           data={"send_id": send.id, "task_id": task.id, "campaign_id": task.campaign_id,
                 "enrollment_id": task.enrollment_id, "contact_id": contact.id,
                 "due_at": send_at.isoformat()})
    return send


def cancel_task_send(session: Session, user: User, task_id: int, *, reason: str,
                     now: datetime) -> bool:
    """Withdraw the task's unclaimed send (the rep sent it by hand, or skipped the task).

    Returns True when a send was cancelled. One already claimed by the sender is a
    ``Conflict``: it may be leaving right now, so the task cannot be closed under it.
    """
    _lock_task(session, user, task_id, admin_ok=True)
    sends = session.scalars(
        select(ScheduledSend).where(ScheduledSend.task_id == task_id,
                                    ScheduledSend.status.in_(ACTIVE)).with_for_update()
    ).all()
    if any(s.status is not SendStatus.SCHEDULED for s in sends):
        raise Conflict("the email is already being sent; wait for it to finish")
    for send in sends:
        send.status = SendStatus.CANCELLED
        send.reason = f"cancelled: {reason}"
        send.updated_at = now
    session.flush()
    return bool(sends)


def task_send(session: Session, user: User, task_id: int) -> ScheduledSend | None:
    """The task's live (scheduled or in-flight) send, if any."""
    return session.scalar(
        select(ScheduledSend).where(ScheduledSend.task_id == task_id,
                                    ScheduledSend.owner_id == user.id,
                                    ScheduledSend.status.in_(ACTIVE))
        .order_by(ScheduledSend.id.desc()).limit(1)
    )


def scheduled_by_task(session: Session, user: User, task_ids: list[int]) -> dict[int, datetime]:
    """For the given tasks, the due moment of each one's live send (to badge task lists)."""
    if not task_ids:
        return {}
    rows = session.execute(
        select(ScheduledSend.task_id, ScheduledSend.due_at)
        .where(ScheduledSend.owner_id == user.id, ScheduledSend.task_id.in_(task_ids),
               ScheduledSend.status.in_(ACTIVE))
    ).all()
    return {r.task_id: r.due_at for r in rows}


def list_sends(session: Session, user: User, statuses: tuple[SendStatus, ...], *,
               limit: int = 200, org_wide: bool = False) -> tuple[list[Row[Any]], int]:
    """The rep's sends in ``statuses`` (soonest due first, failures newest first) and a total.

    ``org_wide`` lists every rep's sends of the user's org instead (an admin resolving failed
    emails); each row names its owner.
    """
    whose = (ScheduledSend.org_id == user.org_id if org_wide
             else ScheduledSend.owner_id == user.id)
    cond = [whose, ScheduledSend.status.in_(statuses)]
    total = session.scalar(select(func.count()).select_from(ScheduledSend).where(*cond)) or 0
    failed = set(statuses) <= set(FAILED)
    order = ((ScheduledSend.updated_at.desc(), ScheduledSend.id.desc()) if failed
             else (ScheduledSend.due_at, ScheduledSend.id))
    rows = session.execute(
        select(ScheduledSend.id, ScheduledSend.task_id, ScheduledSend.status,
               ScheduledSend.due_at, ScheduledSend.to_email, ScheduledSend.subject,
               ScheduledSend.reason, ScheduledSend.updated_at, ScheduledSend.owner_id,
               ScheduledSend.campaign_id, ScheduledSend.contact_id,
               User.name.label("owner_name"),
               Campaign.name.label("campaign_name"), Contact.first_name, Contact.last_name)
        .outerjoin(Campaign, Campaign.id == ScheduledSend.campaign_id)
        .join(User, User.id == ScheduledSend.owner_id)
        .join(Contact, Contact.id == ScheduledSend.contact_id)
        .where(*cond).order_by(*order).limit(limit)
    ).all()
    return list(rows), total
