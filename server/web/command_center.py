"""The Command Center page: tasks by due window, scheduled and failed emails, the Live Feed."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import flash, redirect, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.campaigns.spec import StepType
from server.db import get_session, utcnow
from server.errors import Conflict, Invalid
from server.feed.models import EventKind, FeedEvent
from server.feed.service import latest_cursor
from server.sending import resolve
from server.sending import schedule as outbox
from server.sending.models import SendStatus
from server.tasks.service import Due, TaskFilter, list_tasks
from server.web.views import bp, localtime, page, require_csrf, require_signed_in, signed_in

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
                                         limit=200 if tab == "failed" else 0,
                                         org_wide=user.role is Role.ADMIN)
    sends = scheduled if tab == "scheduled" else failed
    if tab == "failed":
        sends = [{"row": r, "explanation": failed_explanation(r, user),
                  "outcomes": resolve.choices(r.status)} for r in failed]
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


#: A rule code in parentheses, "(E5)" or "(T4, T7)": never shown on a page.
_RULE_CODES = re.compile(r"\s*\((?:[A-Z]\d{1,2}(?:,\s*)?)+\)")


def _plain_reason(reason: str | None) -> str:
    """The recorded reason as a clause: its state prefix and any rule codes taken off."""
    text = (reason or "").strip()
    for prefix in ("needs attention:", "failed:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip()
    text = _RULE_CODES.sub("", text).rstrip(". ")
    return text or "no reason was recorded"


def failed_explanation(row: Any, viewer: User) -> str:
    """What happened to a failed or unknown email, and what each button does, in plain words.

    Moments are in the viewer's time zone, in the page's one format (``localtime``).
    """
    who = f"{row.first_name or ''} {row.last_name or ''}".strip() or row.to_email
    when = localtime(row.updated_at, viewer.timezone)
    whose = "" if row.owner_id == viewer.id else f" (sent from {row.owner_name}'s mailbox)"
    moves = ("the campaign moves on" if row.campaign_id is not None and row.task_id is None
             else "the task is completed" if row.task_id is not None
             else "it is recorded as sent")
    reason = _plain_reason(row.reason)
    if row.status is SendStatus.NEEDS_ATTENTION:
        return (f"We cannot tell whether the email to {who}{whose} left (we stopped trying "
                f"on {when}): {reason}. If it reached {who}, choose “It was sent” and {moves}; "
                "if not, “Send it again” sends it as a new email.")
    return (f"The email to {who}{whose} was not sent (it stopped on {when}): {reason}. Once "
            "that is fixed, “Send it again” sends it as a new email.")


_OUTCOME_WORDS = {"sent": "Marked as sent", "resend": "Sending it again"}


@bp.post("/sends/<int:send_id>/resolve")
def resolve_failed(send_id: int) -> Any:
    """The Failed tab's buttons: "It was sent" or "Send it again" (then back to the tab)."""
    user = require_signed_in()
    require_csrf()
    outcome = request.form.get("outcome", "")
    back = redirect(url_for("web.home", tab="failed"))
    if outcome not in ("sent", "resend"):
        flash("Choose “It was sent” or “Send it again”.")
        return back
    session = get_session()
    try:
        done = resolve.resolve_send(session, user, send_id, outcome,  # type: ignore[arg-type]
                                    utcnow())
    except resolve.SendNotFound:
        session.rollback()
        flash("That email is not in your Failed list any more.")
        return back
    except (Conflict, Invalid) as exc:
        session.rollback()
        flash(f"Nothing was changed: {exc}.")
        return back
    session.commit()
    who = done.send.to_email
    if done.resend is not None:
        flash(f"{_OUTCOME_WORDS[outcome]}: the email to {who} is queued to be sent now.")
    else:
        flash(f"{_OUTCOME_WORDS[outcome]}: the email to {who} is recorded as sent.")
    return back
