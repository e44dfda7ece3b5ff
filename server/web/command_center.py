"""The Command Center page: tasks by due window, scheduled and failed emails, the Live Feed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import redirect, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.campaigns.spec import StepType
from server.compose import outbox
from server.db import get_session, utcnow
from server.feed.models import EventKind, FeedEvent
from server.feed.service import latest_cursor
from server.tasks.service import Due, TaskFilter, list_tasks
from server.web.views import bp, page, signed_in

TABS = ("tasks", "scheduled", "failed")
#: How many tasks a due section shows; the heading gives the full count.
SECTION_LIMIT = 200
FEED_RECENT = 15


def _recent_events(session: Session, user: User, limit: int) -> list[FeedEvent]:
    """The newest feed events the user may see, newest first (same visibility as the API)."""
    stmt = select(FeedEvent)
    if user.role is Role.ADMIN:
        stmt = stmt.where(FeedEvent.org_id == user.org_id)
    else:
        stmt = stmt.where(FeedEvent.owner_id == user.id)
    return list(session.scalars(stmt.order_by(FeedEvent.id.desc()).limit(limit)))


def _task_sections(session: Session, user: User, kind: StepType | None,
                   now: datetime) -> list[dict[str, Any]]:
    """Overdue, today, tomorrow and the rest of the next 7 days, each with rows and a count."""
    overdue, n_overdue = list_tasks(session, user, TaskFilter(
        due=Due.OVERDUE, type=kind, per_page=SECTION_LIMIT), now)
    sections = [{"key": "overdue", "label": "Overdue", "rows": overdue, "total": n_overdue}]
    for key, label, due in (("today", "Today", Due.TODAY), ("tomorrow", "Tomorrow", Due.TOMORROW)):
        rows, total = list_tasks(session, user, TaskFilter(due=due, type=kind,
                                                           per_page=SECTION_LIMIT), now)
        sections.append({"key": key, "label": label, "rows": rows, "total": total})
    # "Next 7 days" here means after tomorrow: today and tomorrow have their own sections.
    zone = ZoneInfo(user.timezone)
    after_tomorrow = (now.astimezone(zone).date() + timedelta(days=2))
    week, n_week = list_tasks(session, user, TaskFilter(due=Due.NEXT7, type=kind,
                                                        per_page=SECTION_LIMIT * 2), now)
    later = [r for r in week if r.due_at.astimezone(zone).date() >= after_tomorrow]
    n_later = n_week - sections[1]["total"] - sections[2]["total"]
    sections.append({"key": "later", "label": "Next 7 days", "rows": later[:SECTION_LIMIT],
                     "total": n_later})
    return sections


@bp.get("/")
def home() -> Any:
    """The Command Center: tabs Tasks, Scheduled and Failed, and the Live Feed panel."""
    user = signed_in()
    if user is None:
        return redirect(url_for("web.sign_in"))
    session = get_session()
    now = utcnow()
    tab = request.args.get("tab", "tasks")
    if tab not in TABS:
        tab = "tasks"
    try:
        kind: StepType | None = StepType(request.args.get("type", ""))
    except ValueError:
        kind = None
    sections: list[dict[str, Any]] = []
    badges: dict[int, datetime] = {}
    sends: list[Any] = []
    if tab == "tasks":
        sections = _task_sections(session, user, kind, now)
        badges = outbox.scheduled_by_task(
            session, user, [r.id for s in sections for r in s["rows"]])
    scheduled, n_scheduled = outbox.list_sends(session, user, outbox.ACTIVE,
                                               limit=200 if tab == "scheduled" else 0)
    failed, n_failed = outbox.list_sends(session, user, outbox.FAILED,
                                         limit=200 if tab == "failed" else 0)
    sends = scheduled if tab == "scheduled" else failed
    _, n_tasks = list_tasks(session, user, TaskFilter(due=Due.OVERDUE, per_page=1), now)
    _, n_week = list_tasks(session, user, TaskFilter(due=Due.NEXT7, per_page=1), now)
    events = _recent_events(session, user, FEED_RECENT)
    cursor = latest_cursor(session, user)
    connected = outbox.mailbox_connected(session, user)
    session.commit()
    return page("web/home.html", user, tab=tab, kind=kind, types=list(StepType),
                sections=sections, badges=badges, sends=sends,
                counts={"tasks": n_tasks + n_week, "scheduled": n_scheduled,
                        "failed": n_failed},
                events=events, cursor=cursor, event_kinds=[k.value for k in EventKind],
                mailbox_connected=connected)
