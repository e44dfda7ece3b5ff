"""The scheduled-send outbox: one row per email the system will send."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, enum_column, utcnow
from server.outbox.leases import Leased


class SendStatus(enum.StrEnum):
    """States of a scheduled send; the dispatcher (sending issue) moves them forward."""

    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    DRAFTED = "drafted"
    SENDING = "sending"
    SENT = "sent"
    UNCERTAIN = "uncertain"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    CANCELLED = "cancelled"


SEND_TRANSITIONS: dict[SendStatus, frozenset[SendStatus]] = {
    SendStatus.SCHEDULED: frozenset(
        {SendStatus.CLAIMED, SendStatus.CANCELLED, SendStatus.NEEDS_ATTENTION}
    ),
    SendStatus.CLAIMED: frozenset(
        {SendStatus.DRAFTED, SendStatus.SCHEDULED, SendStatus.FAILED, SendStatus.CANCELLED}
    ),
    SendStatus.DRAFTED: frozenset({SendStatus.SENDING, SendStatus.UNCERTAIN, SendStatus.FAILED}),
    SendStatus.SENDING: frozenset({SendStatus.SENT, SendStatus.UNCERTAIN, SendStatus.FAILED}),
    SendStatus.UNCERTAIN: frozenset({SendStatus.SENT, SendStatus.SCHEDULED, SendStatus.FAILED}),
}


class ScheduledSend(Leased, Base):
    """An email due at a moment: an automatic campaign step, or a task the rep scheduled."""

    __tablename__ = "scheduled_send"
    __table_args__ = (
        Index("ix_scheduled_send_due", "status", "due_at"),
        Index("ix_scheduled_send_owner", "owner_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), default=None
    )
    enrollment_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment.id", ondelete="CASCADE"), default=None, index=True
    )
    enrollment_step_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment_step.id", ondelete="CASCADE"), default=None, unique=True
    )
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("task.id", ondelete="SET NULL"), default=None
    )
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id", ondelete="CASCADE"))
    status: Mapped[SendStatus] = mapped_column(
        enum_column(SendStatus), default=SendStatus.SCHEDULED
    )
    due_at: Mapped[datetime]
    to_email: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(998), default=None)
    html: Mapped[str | None] = mapped_column(Text, default=None)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
