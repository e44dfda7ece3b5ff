"""Recording and reading Live Feed events."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.db import utcnow
from server.feed.models import EventKind, FeedEvent


def record(session: Session, *, org_id: int, owner_id: int, kind: EventKind, summary: str,
           data: dict[str, Any] | None = None) -> None:
    """Add one event to the feed (committed with the change it reports)."""
    record_many(session, [dict(org_id=org_id, owner_id=owner_id, kind=kind, summary=summary,
                               data=data or {})])


def record_many(session: Session, events: Sequence[dict[str, Any]]) -> None:
    """Add many events in one statement (launching thousands of people)."""
    if not events:
        return
    now = utcnow()
    session.execute(insert(FeedEvent), [{"created_at": now, **e} for e in events])


def events_after(session: Session, user: User, after: int, limit: int) -> list[FeedEvent]:
    """Events the user may see with an id above ``after``, oldest first.

    A rep sees their own events; an admin sees the whole org's.
    """
    stmt = select(FeedEvent).where(FeedEvent.id > after)
    if user.role is Role.ADMIN:
        stmt = stmt.where(FeedEvent.org_id == user.org_id)
    else:
        stmt = stmt.where(FeedEvent.owner_id == user.id)
    return list(session.scalars(stmt.order_by(FeedEvent.id).limit(limit)))


def latest_cursor(session: Session, user: User) -> int:
    """The id of the newest event the user may see (0 when there is none)."""
    stmt = select(FeedEvent.id)
    if user.role is Role.ADMIN:
        stmt = stmt.where(FeedEvent.org_id == user.org_id)
    else:
        stmt = stmt.where(FeedEvent.owner_id == user.id)
    return session.scalar(stmt.order_by(FeedEvent.id.desc()).limit(1)) or 0


def as_dict(event: FeedEvent) -> dict[str, Any]:
    """The JSON form of an event."""
    return {
        "id": event.id,
        "kind": event.kind.value,
        "summary": event.summary,
        "data": event.data,
        "owner_id": event.owner_id,
        "created_at": event.created_at.isoformat(),
    }


def iter_kinds() -> Iterable[str]:
    """Every event kind, for documentation."""
    return (k.value for k in EventKind)
