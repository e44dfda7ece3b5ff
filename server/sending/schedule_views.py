"""API: put an email task's (edited) email into the scheduled-send outbox."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint
from pydantic import AwareDatetime, Field

from server.accounts.auth import api_user
from server.api.errors import not_found
from server.api.operations import Model, Out, operation
from server.db import get_session, utcnow
from server.sending import schedule as outbox
from server.sending.models import SendStatus

bp = Blueprint("outbox", __name__, url_prefix="/api/tasks")


class ScheduleIn(Model):
    """The email as the rep edited it, and when to send it (default: now)."""

    subject: str = Field(max_length=outbox.MAX_SUBJECT)
    html: str = Field(max_length=outbox.MAX_HTML)
    text: str | None = Field(None, max_length=outbox.MAX_HTML,
                             description="plain-text part; derived from html when absent")
    send_at: AwareDatetime | None = Field(None, description="default: now")


class ScheduledSendOut(Out):
    """A send waiting in the outbox (or on its way)."""

    id: int
    task_id: int | None
    status: SendStatus
    due_at: datetime
    to_email: str
    subject: str | None
    html: str | None
    text: str | None
    mailbox_connected: bool = Field(
        description="false: the email waits in the outbox until the rep's mailbox is connected")


@operation(bp, "/<int:task_id>/schedule", "POST", body=ScheduleIn, response=ScheduledSendOut)
def schedule(task_id: int, body: ScheduleIn) -> ScheduledSendOut:
    """Send an email task now or at ``send_at``: its email goes into the outbox (E1, E6).

    Refused while a field prompt ``{{! …}}`` remains, for a subject with CR or LF, or a moment
    in the past. Scheduling again replaces the task's unclaimed send; the task stays open until
    the email has left.
    """
    user = api_user()
    session = get_session()
    now = utcnow()
    try:
        send = outbox.schedule_task_email(
            session, user, task_id, subject=body.subject, html=body.html, text=body.text,
            send_at=body.send_at or now, now=now)
    except outbox.TaskNotFound:
        raise not_found("task") from None
    out = ScheduledSendOut.model_validate(
        {**{k: getattr(send, k) for k in ScheduledSendOut.model_fields if hasattr(send, k)},
         "mailbox_connected": outbox.mailbox_connected(session, user)})
    session.commit()
    return out
