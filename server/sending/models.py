"""The scheduled-send outbox: one row per email the system will send."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, JSONType, enum_column, utcnow
from server.leases import Leased


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
    #: A person chose to send the email again: this row stays as the record, a new row (its
    #: ``resend_of_id`` names this one) carries the email (server/sending/resolve.py).
    RESENT = "resent"


class Resolution(enum.StrEnum):
    """How a person resolved an email that needed attention or failed."""

    #: "It was sent": the rep found that the email had left; it is recorded as sent.
    SENT = "sent"
    #: "Send it again": a new send (a new Message-ID) replaces this one.
    RESENT = "resent"


SEND_TRANSITIONS: dict[SendStatus, frozenset[SendStatus]] = {
    SendStatus.SCHEDULED: frozenset(
        {SendStatus.CLAIMED, SendStatus.CANCELLED, SendStatus.NEEDS_ATTENTION}
    ),
    # CLAIMED -> SENDING: a row whose draft reconciliation kept (it is sent from that draft).
    SendStatus.CLAIMED: frozenset(
        {SendStatus.DRAFTED, SendStatus.SCHEDULED, SendStatus.FAILED, SendStatus.CANCELLED,
         SendStatus.SENDING}
    ),
    # A drafted row whose lease ran out is resumed as it is (its draft exists, it was never
    # marked sending); one that cannot get a pacing slot yet waits, still drafted.
    SendStatus.DRAFTED: frozenset({SendStatus.SENDING, SendStatus.UNCERTAIN, SendStatus.FAILED}),
    # SENDING -> DRAFTED only when the provider refused before acting (daily limit, reauth).
    SendStatus.SENDING: frozenset({SendStatus.SENT, SendStatus.UNCERTAIN, SendStatus.FAILED,
                                   SendStatus.DRAFTED}),
    # Reconciliation: found in Sent -> sent; draft still there -> scheduled again; not known
    # -> needs_attention (never guessed).
    SendStatus.UNCERTAIN: frozenset({SendStatus.SENT, SendStatus.SCHEDULED, SendStatus.FAILED,
                                     SendStatus.NEEDS_ATTENTION}),
    # Only a person leaves these (server/sending/resolve.py): "it was sent" or "send it again".
    # A failed email is known not to have left, so it can only be sent again.
    SendStatus.NEEDS_ATTENTION: frozenset({SendStatus.SENT, SendStatus.RESENT}),
    SendStatus.FAILED: frozenset({SendStatus.RESENT}),
}


class ScheduledSend(Leased, Base):
    """An email due at a moment: an automatic campaign step, or a task the rep scheduled."""

    __tablename__ = "scheduled_send"
    __table_args__ = (
        Index("ix_scheduled_send_due", "status", "due_at"),
        # Fair claiming asks, per mailbox, for its oldest due rows: owner, state, then due.
        Index("ix_scheduled_send_owner_due", "owner_id", "status", "due_at"),
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
    # The dispatcher's bookkeeping (server/sending/dispatcher.py).
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    message_id: Mapped[str | None] = mapped_column(String(255), default=None)
    draft_id: Mapped[str | None] = mapped_column(String(255), default=None)
    provider_message_id: Mapped[str | None] = mapped_column(String(255), default=None)
    thread_id: Mapped[str | None] = mapped_column(String(255), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # A person's resolution of an email that needed attention or failed (server/sending/resolve.py).
    resolution: Mapped[Resolution | None] = mapped_column(enum_column(Resolution, 16),
                                                          default=None)
    resolved_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("user.id", ondelete="SET NULL"), default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    #: The send this one repeats ("send it again"); None for every first attempt.
    resend_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("scheduled_send.id", ondelete="SET NULL"), default=None, index=True)


class MailboxPace(Base):
    """The sending state of one rep's mailbox, shared by every worker process.

    ``recent`` holds the moments (epoch seconds) of the mailbox's latest sends, at most the
    pace's count, so the sliding-window pace is checked exactly; ``day``/``day_count`` count
    the sends of the current UTC day for the daily cap; ``paused_until`` stops the mailbox
    (a provider daily limit, a refused credential).
    """

    __tablename__ = "mailbox_pace"

    owner_id: Mapped[int] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    recent: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    day: Mapped[date | None] = mapped_column(Date, default=None)
    day_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    #: When a worker last claimed emails of this mailbox: claims serve the mailboxes least
    #: recently served first, so none waits behind the others.
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)


class OrgSendPolicy(Base):
    """An org's own daily cap per rep (default ``SEND_DAILY_CAP``; never above the provider's)."""

    __tablename__ = "org_send_policy"

    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"),
                                        primary_key=True)
    daily_cap: Mapped[int] = mapped_column(Integer)
