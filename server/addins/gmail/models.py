"""The drafts the add-on created through the Gmail API (so a replayed action makes none)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, utcnow


class GmailReplyDraft(Base):
    """"Reply with this task" on one Gmail message: claimed first, then the draft's ids.

    Google replays an action after the user consents to a scope; the unique (task, message)
    pair makes the second run find the first one's draft instead of creating another.
    ``draft_id`` is None while the draft is being created.
    """

    __tablename__ = "gmail_reply_draft"
    __table_args__ = (UniqueConstraint("task_id", "gmail_message_id",
                                       name="uq_gmail_reply_draft_task_message"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"))
    gmail_message_id: Mapped[str] = mapped_column(String(255))
    draft_id: Mapped[str | None] = mapped_column(String(255), default=None)
    thread_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
