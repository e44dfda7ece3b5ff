"""Opaque task tags: what the ``X-Relay-Task`` header carries instead of the task's id.

The header travels with the sent email to the recipient, so it must not say how many tasks
Relay holds or let anyone name another task: each email task gets, the first time one of its
emails is tagged, a random tag (``rt_`` and 24 URL-safe characters, 144 bits) kept in
``task_tag``. Sent detection and the Outlook send report map a tag back to its task; a
plain number (emails tagged before tags existed) is still read as a task id.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.db import Base

#: A tag as :func:`new_tag` makes it.
TAG = re.compile(r"^rt_[A-Za-z0-9_-]{24}$")
#: A task id as the header carried it before tags (still read, never written).
_OLD_ID = re.compile(r"^\d{1,15}$")


class TaskTag(Base):
    """The opaque tag of one task (made when one of its emails is first tagged)."""

    __tablename__ = "task_tag"

    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"),
                                         primary_key=True)
    tag: Mapped[str] = mapped_column(String(40), unique=True)


def new_tag() -> str:
    """A fresh random tag: ``rt_`` and 24 URL-safe characters (144 random bits)."""
    return "rt_" + secrets.token_urlsafe(18)


def tag_for_task(session: Session, task_id: int) -> str:
    """The tag of task ``task_id``, made and stored the first time (the caller commits)."""
    for _ in range(3):
        found = session.scalar(select(TaskTag.tag).where(TaskTag.task_id == task_id))
        if found is not None:
            return found
        tag = new_tag()
        try:
            with session.begin_nested():
                session.add(TaskTag(task_id=task_id, tag=tag))
        except IntegrityError:
            continue  # made at the same moment elsewhere: read that one
        return tag
    raise RuntimeError(f"could not store a tag for task {task_id}")


def task_id_of(session: Session, value: str | None) -> int | None:
    """The task an ``X-Relay-Task`` value names: a stored tag, or an old plain task id."""
    value = (value or "").strip()
    if _OLD_ID.match(value):
        return int(value)
    if not TAG.match(value):
        return None
    return session.scalar(select(TaskTag.task_id).where(TaskTag.tag == value))
