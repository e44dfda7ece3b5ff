"""API: the emails that wait for a person (Failed tab), and resolving one of them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from flask import Blueprint
from pydantic import AwareDatetime, Field

from server.accounts.auth import api_user
from server.accounts.models import Role
from server.api.errors import not_found
from server.api.operations import Model, Out, Query, operation
from server.db import get_session, utcnow
from server.sending import resolve
from server.sending import schedule as outbox
from server.sending.models import Resolution, ScheduledSend, SendStatus

bp = Blueprint("sends", __name__, url_prefix="/api/sends")


class FailedQuery(Query):
    """Which of the waiting emails to list (default: both states)."""

    status: Literal["failed", "needs_attention"] | None = None
    limit: int = Field(200, ge=1, le=500)


class FailedSendOut(Out):
    """An email that failed or needs attention, with what the caller can do about it."""

    id: int
    owner_id: int
    owner_name: str | None
    status: SendStatus
    reason: str | None
    due_at: datetime
    updated_at: datetime
    to_email: str
    subject: str | None
    task_id: int | None
    campaign_id: int | None
    campaign_name: str | None
    contact_id: int
    outcomes: list[Literal["sent", "resend"]] = Field(
        description="what POST /api/sends/{id}/resolve accepts for it")


class FailedSendList(Out):
    """The waiting emails, newest first, and how many there are in all."""

    items: list[FailedSendOut]
    total: int


class ResolveIn(Model):
    """How the email was resolved: it did leave ("sent"), or send it again ("resend")."""

    outcome: Literal["sent", "resend"]
    sent_at: AwareDatetime | None = Field(
        None, description='with "sent": when it left (default: now); between its due moment '
                          "and now")


class SendOut(Out):
    """A scheduled send as it stands."""

    id: int
    status: SendStatus
    due_at: datetime
    sent_at: datetime | None
    to_email: str
    subject: str | None
    task_id: int | None
    campaign_id: int | None
    resolution: Resolution | None
    resolved_by_id: int | None
    resolved_at: datetime | None
    resend_of_id: int | None


class ResolveOut(Out):
    """The resolved send, and for "resend" the new send that carries the email."""

    send: SendOut
    resend: SendOut | None


@operation(bp, "/failed", "GET", query=FailedQuery, response=FailedSendList)
def failed(query: FailedQuery) -> FailedSendList:
    """The emails under the Command Center's Failed tab: failed or needing attention.

    A rep sees their own; an admin sees every rep's of the org. Newest first.
    """
    user = api_user()
    statuses = (SendStatus(query.status),) if query.status else outbox.FAILED
    rows, total = outbox.list_sends(get_session(), user, statuses, limit=query.limit,
                                    org_wide=user.role is Role.ADMIN)
    items = [FailedSendOut.model_validate({**r._mapping,
                                           "outcomes": list(resolve.choices(r.status))})
             for r in rows]
    get_session().commit()
    return FailedSendList(items=items, total=total)


def _out(send: ScheduledSend | None) -> SendOut | None:
    return SendOut.model_validate(send) if send is not None else None


@operation(bp, "/<int:send_id>/resolve", "POST", body=ResolveIn, response=ResolveOut)
def resolve_send(send_id: int, body: ResolveIn) -> ResolveOut:
    """Resolve an email that needs attention or failed: "sent" or "resend".

    "sent" (needs attention only) records it as sent and the campaign moves on (a task email
    completes its task). "resend" schedules a new send of the same email now, with a new
    Message-ID, linked to this one (`resend_of_id`); this one becomes `resent`. The rep who
    owns it or an admin of the org may; resolving twice is 409.
    """
    user = api_user()
    session = get_session()
    try:
        done = resolve.resolve_send(session, user, send_id, body.outcome, utcnow(),
                                    sent_at=body.sent_at)
    except resolve.SendNotFound:
        raise not_found("send") from None
    out = ResolveOut(send=SendOut.model_validate(done.send), resend=_out(done.resend))
    session.commit()
    return out
