"""The compose window of an email task: edit, then send now, schedule, mark as sent or skip."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, request, url_for

from server.accounts.models import User
from server.api.errors import FieldError
from server.compose.prefill import prefill_for_task
from server.compose.render import sanitise_html
from server.db import get_session, utcnow
from server.errors import Conflict, Invalid
from server.sending import schedule as outbox
from server.tasks.models import CompletedVia, TaskStatus
from server.tasks.service import complete_task, get_task_row, skip_task
from server.web.views import bp, page, require_csrf, signed_in

ACTIONS = ("send", "schedule", "mark_sent", "skip", "unschedule")


def _default_moment(now: datetime, tz: str) -> datetime:
    """The schedule inputs' starting value: the next full hour, in the rep's time zone."""
    local = now.astimezone(ZoneInfo(tz))
    return local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def parse_local_moment(day: str, clock: str, tz: str) -> datetime:
    """``YYYY-MM-DD`` and ``HH:MM`` in time zone ``tz`` as an aware moment; Invalid if unreadable.

    A wall-clock time that does not exist (skipped by a daylight-saving change) is taken as
    the same clock reading before the change, as ``zoneinfo`` does (``fold=0``).
    """
    try:
        d = date.fromisoformat(day.strip())
        t = time.fromisoformat(clock.strip())
    except ValueError:
        raise Invalid([FieldError("send_at", "give a date (YYYY-MM-DD) and a time (HH:MM)")]
                      ) from None
    return datetime.combine(d, t.replace(second=0, microsecond=0), ZoneInfo(tz))


def _close_task(user: User, task_id: int, action: str, now: datetime) -> str:
    """Mark the task as sent or skip it, withdrawing any email of it still in the outbox."""
    session = get_session()
    if action == "mark_sent":
        # complete_task and skip_task withdraw the task's unclaimed send themselves.
        complete_task(session, user, task_id, now=now, sent_at=now, via=CompletedVia.WEB)
        return "Marked as sent. The campaign moves on to the next step."
    skip_task(session, user, task_id, now=now)
    return "Task skipped. The campaign moves on to the next step."


@bp.route("/tasks/<int:task_id>/compose", methods=["GET", "POST"])
def compose(task_id: int) -> Any:
    """The compose window of one of the rep's email tasks (E1, E6).

    Send now and Schedule put the edited email into the outbox (refused while a field prompt
    remains or the task is blocked by a missing field); Mark as sent completes the task;
    Skip skips it. Errors are shown on the page with the rep's edits kept.
    """
    user = signed_in()
    if user is None:
        return redirect(url_for("web.sign_in"))
    session = get_session()
    now = utcnow()
    row = get_task_row(session, user, task_id)
    if row is None:
        abort(404)
    try:
        doc = prefill_for_task(session, user, task_id)
    except Conflict:
        abort(404, "only email tasks have a compose window")
    if doc is None:
        abort(404)
    send = outbox.task_send(session, user, task_id)
    subject = send.subject if send and send.subject is not None else doc["subject"]
    html = send.html if send and send.html is not None else doc["html"]
    default = send.due_at if send else _default_moment(now, user.timezone)
    local = default.astimezone(ZoneInfo(user.timezone))
    send_date, send_time = local.strftime("%Y-%m-%d"), local.strftime("%H:%M")
    errors: list[FieldError] = []
    status = 200
    if request.method == "POST":
        require_csrf()
        action = request.form.get("action", "")
        if action not in ACTIONS:
            abort(400, "unknown action")
        subject = request.form.get("subject", subject)
        html = request.form.get("html", html)
        send_date = request.form.get("send_date", send_date)
        send_time = request.form.get("send_time", send_time)
        try:
            message = _act(user, task_id, action, doc, subject=subject, html=html,
                           send_date=send_date, send_time=send_time, now=now)
        except Invalid as exc:
            session.rollback()
            errors, status = exc.errors, 422
        except Conflict as exc:
            session.rollback()
            errors, status = [FieldError("task", str(exc))], 409
        else:
            session.commit()
            flash(message)
            target = "scheduled" if action in ("send", "schedule") else "tasks"
            return redirect(url_for("web.home", tab=target))
        # Reload what may have changed under us before showing the page again.
        row = get_task_row(session, user, task_id)
        send = outbox.task_send(session, user, task_id)
    assert row is not None
    connected = outbox.mailbox_connected(session, user)
    session.commit()
    tz = ZoneInfo(user.timezone)
    # The editor shows HTML: what the rep posted is sanitised like everything else shown there.
    return page("web/compose.html", user, status, task=row, doc=doc, subject=subject,
                html=sanitise_html(html),
                send=send, errors=errors, send_date=send_date, send_time=send_time,
                min_date=now.astimezone(tz).strftime("%Y-%m-%d"),
                is_open=row.status is TaskStatus.OPEN, mailbox_connected=connected,
                has_prompt=outbox.has_prompt(subject, html))


def _act(user: User, task_id: int, action: str, doc: dict[str, Any], *, subject: str,
         html: str, send_date: str, send_time: str, now: datetime) -> str:
    """Do one compose action; returns the message to flash. Raises Invalid or Conflict."""
    session = get_session()
    if action in ("mark_sent", "skip"):
        return _close_task(user, task_id, action, now)
    if action == "unschedule":
        if outbox.cancel_task_send(session, user, task_id, reason="unscheduled by the rep",
                                   now=now):
            return "The scheduled email was withdrawn from the outbox."
        return "Nothing was scheduled."
    if doc["blocked"]:
        fields = ", ".join(doc["blocked"]["fields"])
        raise Invalid([FieldError("task", f"blocked: the contact is missing {fields}; fill "
                                          "it in on the contact before sending", "E5")])
    send_at = (now if action == "send"
               else parse_local_moment(send_date, send_time, user.timezone))
    sent = outbox.schedule_task_email(session, user, task_id, subject=subject, html=html,
                                      send_at=send_at, now=now)
    when = sent.due_at.astimezone(ZoneInfo(user.timezone)).strftime("%a %d %b %H:%M")
    waiting = ("" if outbox.mailbox_connected(session, user)
               else " Your mailbox is not connected yet, so it waits in the outbox.")
    if action == "send":
        return f"Email to {sent.to_email} queued to send now.{waiting}"
    return f"Email to {sent.to_email} scheduled for {when} ({user.timezone}).{waiting}"
