"""Microsoft identities linked to Relay users, and sends reported by the Outlook add-in."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class MicrosoftIdentity(Base):
    """A Microsoft Entra user (tenant ``tid`` + object ``oid``) linked to a Relay user.

    The link is made once, by a rep who proves both identities (a Relay sign-in and a valid
    Entra token); after that the Entra token alone authenticates the add-in.
    """

    __tablename__ = "microsoft_identity"
    __table_args__ = (UniqueConstraint("tid", "oid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tid: Mapped[str] = mapped_column(String(36))
    oid: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)


class TaskSendReport(Base):
    """The Outlook add-in saw a message tagged ``x-relay-task`` being sent for this task.

    It is a report, not a completion: the message may still fail or be cancelled. The task is
    completed when the sent message is confirmed (Sent Items, once the mailbox is connected)
    or when the rep marks it as sent.
    """

    __tablename__ = "task_send_report"

    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"),
                                         primary_key=True)
    first_reported_at: Mapped[datetime]
    last_reported_at: Mapped[datetime]
    reports: Mapped[int] = mapped_column(default=1)
