"""What the Gmail add-on's endpoints do, given a session, the Relay user and plain inputs.

Nothing here reads the request or verifies tokens (``views`` and ``tokens`` do); nothing
builds a card (``cards`` does). Reads are one or two indexed queries on the task queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.addins.gmail.cards import PAGE_SIZE, PICKER_SIZE, TaskItem
from server.addins.gmail.client import (
    CreatedDraft,
    EventTokens,
    GmailApi,
    GmailApiError,
    OpenedMessage,
    ReplyDraft,
)
from server.addins.gmail.models import GmailReplyDraft
from server.campaigns.models import Campaign
from server.campaigns.spec import StepType
from server.compose.prefill import prefill_for_task, reply_subject
from server.contacts.models import Contact
from server.errors import Conflict
from server.tasks.models import CompletedVia, Task, TaskStatus
from server.tasks.service import Due, TaskFilter, list_tasks, record_opened

_ITEM_COLUMNS = (Task.id, Task.title, Task.due_at, Task.opened_at,
                 Campaign.name.label("campaign_name"), Contact.email.label("contact_email"),
                 Contact.first_name, Contact.last_name, Contact.company)


def find_user(session: Session, email: str) -> User | None:
    """The Relay user whose email is ``email`` (as given, or lower-cased), or None."""
    variants = {email.strip(), email.strip().lower()}
    return session.scalars(select(User).where(User.email.in_(variants))).first()


def item(row: Row[Any]) -> TaskItem:
    """A task row (with campaign and contact columns) as a card item."""
    name = f"{row.first_name or ''} {row.last_name or ''}".strip()
    return TaskItem(id=row.id, title=row.title, due_at=row.due_at, campaign=row.campaign_name,
                    contact_name=name, contact_email=row.contact_email or "",
                    company=row.company or "", opened=row.opened_at is not None)


def home_page(session: Session, user: User, due: Due, page: int,
              now: datetime) -> tuple[list[TaskItem], int]:
    """One page (:data:`PAGE_SIZE`) of the rep's open email tasks and how many there are."""
    rows, total = list_tasks(session, user, TaskFilter(due=due, type=StepType.EMAIL,
                                                       page=page, per_page=PAGE_SIZE), now)
    return [item(r) for r in rows], total


def _open_email_tasks(user: User) -> Any:
    return (select(*_ITEM_COLUMNS)
            .join(Campaign, Campaign.id == Task.campaign_id)
            .join(Contact, Contact.id == Task.contact_id)
            .where(Task.owner_id == user.id, Task.status == TaskStatus.OPEN,
                   Task.type == StepType.EMAIL)
            .order_by(Task.due_at, Task.id))


def tasks_for_addresses(session: Session, user: User, addresses: Iterable[str],
                        limit: int = PICKER_SIZE) -> list[TaskItem]:
    """The rep's open email tasks whose contact has one of ``addresses`` (soonest first)."""
    wanted = {a.strip() for a in addresses if a and a.strip()}
    wanted |= {a.lower() for a in wanted}
    if not wanted:
        return []
    rows = session.execute(_open_email_tasks(user).where(Contact.email.in_(wanted))
                           .limit(limit)).all()
    return [item(r) for r in rows]


def compose_choices(session: Session, user: User, recipients: Sequence[str],
                    ) -> tuple[list[TaskItem], list[TaskItem]]:
    """Tasks for the draft's recipients, then the other open email tasks due soonest."""
    matching = tasks_for_addresses(session, user, recipients)
    taken = [i.id for i in matching]
    stmt = _open_email_tasks(user)
    if taken:
        stmt = stmt.where(Task.id.not_in(taken))
    others = [item(r) for r in session.execute(stmt.limit(PICKER_SIZE)).all()]
    return matching, others


@dataclass(frozen=True)
class Fill:
    """What to put in the draft for a task: recipients, subject, HTML; or why nothing."""

    task_title: str
    to: list[str]
    subject: str
    html: str
    text: str
    blocked: list[str]
    follow_up: dict[str, Any] | None
    recipients: list[tuple[str, str]]


class NotFillable(Exception):
    """The task is not the rep's, is gone, or is not an email task (the message says which)."""


def fill_for_task(session: Session, user: User, task_id: int) -> Fill:
    """The task's prefill as the add-on fills it; NotFillable when there is none."""
    try:
        doc = prefill_for_task(session, user, task_id)
    except Conflict as exc:
        raise NotFillable(str(exc)) from None
    if doc is None:
        raise NotFillable(f"task {task_id} is not one of your tasks")
    title = session.scalar(select(Task.title).where(Task.id == task_id)) or ""
    blocked = list((doc.get("blocked") or {}).get("fields") or [])
    return Fill(task_title=title, to=[r["email"] for r in doc["to"]],
                recipients=[(r["email"], r["name"]) for r in doc["to"]],
                subject=doc["subject"], html=doc["html"], text=doc["text"], blocked=blocked,
                follow_up=doc.get("follow_up"))


def opened_in_gmail(session: Session, user: User, task_id: int, now: datetime) -> bool:
    """Record the first open of the task in Gmail (idempotent; one Live Feed event)."""
    try:
        return record_opened(session, user, task_id, CompletedVia.GMAIL, now=now)
    except LookupError:
        return False


@dataclass(frozen=True)
class ReplyOutcome:
    """The draft that answers "Reply with this task" (``busy``: another run is creating it)."""

    draft_id: str = ""
    thread_id: str = ""
    busy: bool = False


def reply_draft_for(fill: Fill, message: OpenedMessage) -> ReplyDraft:
    """The threaded reply of ``fill`` to ``message``: its thread, Re: subject and references."""
    refs = " ".join(p for p in (message.references.strip(), message.message_id.strip()) if p)
    return ReplyDraft(to=fill.recipients, subject=reply_subject(message.subject) or fill.subject,
                      html=fill.html, text=fill.text, in_reply_to=message.message_id.strip(),
                      references=refs, thread_id=message.thread_id)


def reply_with_task(session: Session, user: User, api: GmailApi, tokens: EventTokens,
                    fill: Fill, task_id: int, gmail_message_id: str,
                    now: datetime) -> ReplyOutcome:
    """Create (once) the reply draft of task ``task_id`` to Gmail message ``gmail_message_id``.

    The (task, message) pair is claimed in the database before Gmail is called, so a replay
    of the action (Google replays after consent) answers the first run's draft. A Gmail
    failure releases the claim and raises :class:`GmailApiError`. Commits.
    """
    existing = session.scalars(select(GmailReplyDraft).where(
        GmailReplyDraft.task_id == task_id,
        GmailReplyDraft.gmail_message_id == gmail_message_id)).first()
    if existing is not None:
        session.commit()
        if existing.draft_id:
            return ReplyOutcome(existing.draft_id, existing.thread_id or "")
        return ReplyOutcome(busy=True)
    claim = GmailReplyDraft(owner_id=user.id, task_id=task_id,
                            gmail_message_id=gmail_message_id, created_at=now)
    session.add(claim)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return ReplyOutcome(busy=True)
    try:
        message = api.opened_message(tokens, gmail_message_id)
        created: CreatedDraft = api.create_reply_draft(tokens, reply_draft_for(fill, message))
    except (GmailApiError, ValueError):
        session.execute(delete(GmailReplyDraft).where(GmailReplyDraft.id == claim.id))
        session.commit()
        raise
    session.execute(update(GmailReplyDraft).where(GmailReplyDraft.id == claim.id)
                    .values(draft_id=created.draft_id, thread_id=created.thread_id))
    opened_in_gmail(session, user, task_id, now)
    session.commit()
    return ReplyOutcome(created.draft_id, created.thread_id)
