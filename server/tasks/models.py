"""The task table: the rep's to-do items made by campaign steps (T4)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.campaigns.spec import StepType
from server.db import Base, enum_column, utcnow


class TaskStatus(enum.StrEnum):
    """Open until completed or skipped; cancelled when the person leaves the campaign (X1)."""

    OPEN = "open"
    DONE = "done"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.OPEN: frozenset({TaskStatus.DONE, TaskStatus.SKIPPED, TaskStatus.CANCELLED}),
}


class CompletedVia(enum.StrEnum):
    """Where the rep completed a task."""

    WEB = "web"
    GMAIL = "gmail"
    OUTLOOK = "outlook"
    MANUAL = "manual"
    SALESFORCE = "salesforce"  # completed in Salesforce, read back by the sync (issue 7)


class Task(Base):
    """A task for a rep: an email to personalise and send, a call, an InMail or a custom task."""

    __tablename__ = "task"
    __table_args__ = (
        Index("ix_task_queue", "owner_id", "status", "due_at"),
        Index("ix_task_campaign", "campaign_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    enrollment_id: Mapped[int] = mapped_column(
        ForeignKey("enrollment.id", ondelete="CASCADE"), index=True
    )
    enrollment_step_id: Mapped[int] = mapped_column(
        ForeignKey("enrollment_step.id", ondelete="CASCADE"), unique=True
    )
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id", ondelete="CASCADE"))
    type: Mapped[StepType] = mapped_column(enum_column(StepType))
    status: Mapped[TaskStatus] = mapped_column(enum_column(TaskStatus), default=TaskStatus.OPEN)
    title: Mapped[str] = mapped_column(String(300))
    notes: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    day: Mapped[int]
    step_in_day: Mapped[int]
    due_at: Mapped[datetime]
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    message_id: Mapped[str | None] = mapped_column(String(998), default=None)
    via: Mapped[CompletedVia | None] = mapped_column(enum_column(CompletedVia), default=None)
    opened_at: Mapped[datetime | None] = mapped_column(default=None)
    opened_via: Mapped[CompletedVia | None] = mapped_column(
        enum_column(CompletedVia), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
