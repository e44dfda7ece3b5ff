"""The feed event table; its id is the cursor."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, JSONType, enum_column, utcnow


class EventKind(enum.StrEnum):
    """Everything the Live Feed reports."""

    TASK_CREATED = "task.created"
    TASK_COMPLETED = "task.completed"
    TASK_SKIPPED = "task.skipped"
    TASK_OPENED = "task.opened"
    TASK_SENDING = "task.sending"
    SEND_SCHEDULED = "send.scheduled"
    SEND_SENT = "send.sent"
    SEND_FAILED = "send.failed"
    #: A person resolved an email that needed attention or failed (sent, or sent again).
    SEND_RESOLVED = "send.resolved"
    PERSON_ADDED = "person.added"
    PERSON_REMOVED = "person.removed"
    REPLY_RECEIVED = "reply.received"
    BOUNCE_RECEIVED = "bounce.received"


class FeedEvent(Base):
    """One Live Feed entry, visible to its rep (and to the org's admins)."""

    __tablename__ = "feed_event"
    __table_args__ = (
        Index("ix_feed_owner_cursor", "owner_id", "id"),
        Index("ix_feed_org_cursor", "org_id", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(enum_column(EventKind, 32))
    summary: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
