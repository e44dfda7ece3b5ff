"""A person resolves an email the dispatcher could not finish: "it was sent" or "send it again".

An email whose outcome stayed unknown ends ``needs_attention``; one the provider refused (or
that could not be built) ends ``failed``. Either stops the person's campaign (the step stays
active) or leaves the task open until the rep or an admin of the org decides:

* **It was sent** (``needs_attention`` only): the row becomes ``sent`` with
  ``resolution = sent``, who and when, and everything a sent email causes happens exactly as
  when the dispatcher records one (:func:`server.sending.dispatcher.after_sent`: the campaign moves
  on, a task email completes its task, the Live Feed tells). A ``failed`` email is known not to
  have left, so it cannot be marked sent.
* **Send it again** (``needs_attention`` or ``failed``): a *new* row carries the same email
  (content, recipient, campaign step or task; threading is worked out again when it is built)
  due now, with a new Message-ID; its ``resend_of_id`` names the old row, which becomes
  ``resent`` and stays as the record. A failed email may be sent again because most failures
  are gone once the rep acted — a missing field filled in on the contact or template (a
  campaign email is rendered afresh), a corrected address (the contact's current address is
  used), a provider outage over. It is refused when the person has left the campaign or the
  task is no longer open: nobody is written to after they replied or were removed.

Both are one conditional ``UPDATE`` on the row's status (and no live lease), so resolving
twice, two people at once, or a person racing a worker, resolves once: the others get a
``Conflict`` (409) that says so. Another org's email, or another rep's for a rep, is not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.api.errors import FieldError
from server.campaigns.models import Enrollment, EnrollmentStatus, EnrollmentStep, StepStatus
from server.campaigns.progress import contact_name
from server.contacts.models import Contact
from server.errors import Conflict, Invalid
from server.feed.models import EventKind
from server.feed.service import record
from server.leases import expired
from server.sending import schedule as outbox
from server.sending.dispatcher import after_sent
from server.sending.models import SEND_TRANSITIONS, Resolution, ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus

SS = ScheduledSend
Choice = Literal["sent", "resend"]
#: The states a person can resolve.
RESOLVABLE = (SendStatus.NEEDS_ATTENTION, SendStatus.FAILED)
#: Clock tolerance for a ``sent_at`` given by the caller.
FUTURE_TOLERANCE = timedelta(minutes=1)


class SendNotFound(LookupError):
    """No such send for this user (another rep's, or another org's, is not found either)."""


@dataclass(frozen=True)
class Resolved:
    """The resolved row, and for "send it again" the new row that carries the email."""

    send: ScheduledSend
    resend: ScheduledSend | None = None


def choices(status: SendStatus) -> tuple[Choice, ...]:
    """What a person can do about a send in ``status`` (nothing, unless it waits for them)."""
    if status is SendStatus.NEEDS_ATTENTION:
        return ("sent", "resend")
    if status is SendStatus.FAILED:
        return ("resend",)
    return ()


def may_resolve(user: User, send: ScheduledSend) -> bool:
    """The rep who owns the send, or an admin of its org."""
    if send.org_id != user.org_id:
        return False
    return send.owner_id == user.id or user.role is Role.ADMIN


def _refusal(send: ScheduledSend) -> str:
    """Why a send that is not waiting for a person cannot be resolved (the 409 message)."""
    if send.resolution is Resolution.SENT:
        return "this email was already marked as sent"
    if send.resolution is Resolution.RESENT:
        return "this email was already sent again; the new send carries it"
    return (f"this email is {send.status.value.replace('_', ' ')}; only an email that needs "
            "attention or failed can be resolved")


def _check_sent_at(send: ScheduledSend, sent_at: datetime, now: datetime) -> None:
    """A confirmed sending moment lies between the moment the send was due and now (as T9)."""
    if sent_at.tzinfo is None:
        raise Invalid([FieldError("sent_at", "needs a time zone")])
    if sent_at > now + FUTURE_TOLERANCE:
        raise Invalid([FieldError("sent_at", "is in the future")])
    if sent_at < send.due_at:
        raise Invalid([FieldError("sent_at", "is before the email was due")])


def _check_resendable(session: Session, send: ScheduledSend) -> None:
    """Refuse to write again to someone who left the campaign, or for a closed task."""
    if send.enrollment_step_id is not None:
        enrollment = session.get(Enrollment, send.enrollment_id, populate_existing=True)
        step = session.get(EnrollmentStep, send.enrollment_step_id, populate_existing=True)
        if enrollment is None or enrollment.status is not EnrollmentStatus.ACTIVE:
            why = f" ({enrollment.end_reason})" if enrollment and enrollment.end_reason else ""
            raise Conflict(f"the person is no longer in the campaign{why}; the email is not "
                           "sent again")
        if step is None or step.status is not StepStatus.ACTIVE:
            raise Conflict("the campaign has moved past this email; it is not sent again")
    if send.task_id is not None:
        task = session.get(Task, send.task_id, populate_existing=True)
        if task is None or task.status is not TaskStatus.OPEN:
            state = task.status.value if task is not None else "deleted"
            raise Conflict(f"the task is {state}; the email is not sent again")
        # The rep may have scheduled the task's email again from its compose window meanwhile.
        if session.scalar(select(SS.id).where(SS.task_id == send.task_id,
                                              SS.status.in_(outbox.ACTIVE))) is not None:
            raise Conflict("the task's email is already scheduled again; it is not sent a "
                           "second time")


def resolve_send(session: Session, user: User, send_id: int, outcome: Choice,
                 now: datetime, *, sent_at: datetime | None = None) -> Resolved:
    """Resolve an email that needs attention or failed: ``"sent"`` or ``"resend"``.

    ``"sent"`` records it sent at ``sent_at`` (default ``now``) and does what a sent email
    causes; ``"resend"`` schedules a new send of the same email due ``now``, linked to this
    one. ``SendNotFound`` for a send the user may not resolve, ``Conflict`` when it is not
    (or no longer) waiting for a person, ``Invalid`` for a bad ``sent_at``. The caller commits.
    """
    send = session.get(SS, send_id, populate_existing=True)
    if send is None or not may_resolve(user, send):
        raise SendNotFound(send_id)
    if send.status not in RESOLVABLE:
        raise Conflict(_refusal(send))
    was = send.status
    values: dict[str, object] = {"resolved_by_id": user.id, "resolved_at": now,
                                 "updated_at": now, "next_attempt_at": None,
                                 "lease_token": None, "lease_expires_at": None}
    if outcome == "sent":
        if was is SendStatus.FAILED:
            raise Conflict("a failed email is known not to have left; send it again instead")
        sent_at = sent_at or now
        _check_sent_at(send, sent_at, now)
        target = SendStatus.SENT
        values.update(status=target, resolution=Resolution.SENT, sent_at=sent_at)
    elif outcome == "resend":
        if sent_at is not None:
            raise Invalid([FieldError("sent_at", 'only goes with the outcome "sent"')])
        _check_resendable(session, send)
        target = SendStatus.RESENT
        # The campaign step moves to the new row (one live send per step): the follow-up
        # after it is threaded on whichever row of the step was really sent.
        values.update(status=target, resolution=Resolution.RESENT, enrollment_step_id=None)
    else:
        raise Invalid([FieldError("outcome", "must be sent or resend")])
    if target not in SEND_TRANSITIONS.get(was, frozenset()):
        raise AssertionError(f"send status {was.value} -> {target.value} is not allowed")
    step_id = send.enrollment_step_id
    # The one guard against a second resolution and against a worker: only a row still in the
    # state read above, under no live lease, changes (PostgreSQL re-checks it after waiting for
    # a concurrent writer's row lock, so exactly one of two racing resolutions wins).
    changed = session.execute(
        update(SS).where(SS.id == send.id, SS.status == was,
                         or_(SS.lease_token.is_(None), expired(SS, now)))
        .values(**values).execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        raise Conflict("this email changed a moment ago (someone resolved it, or it is being "
                       "worked on); reload to see where it stands")
    session.refresh(send)
    contact = session.get(Contact, send.contact_id)
    who = contact_name(contact) if contact is not None else send.to_email
    actor = user.name or user.email
    resend: ScheduledSend | None = None
    if target is SendStatus.SENT:
        send.contact_name = who  # type: ignore[attr-defined]  # named in the feed event
        after_sent(session, send, send.sent_at or now, send.message_id or "", now)
        summary = f"{actor} confirmed that the email to {who} was sent"
    else:
        resend = SS(org_id=send.org_id, owner_id=send.owner_id, campaign_id=send.campaign_id,
                    enrollment_id=send.enrollment_id, enrollment_step_id=step_id,
                    task_id=send.task_id, contact_id=send.contact_id,
                    status=SendStatus.SCHEDULED, due_at=now,
                    to_email=(contact.email if contact is not None and contact.email
                              else send.to_email),
                    subject=send.subject, html=send.html, text=send.text,
                    resend_of_id=send.id, created_at=now, updated_at=now)
        session.add(resend)
        session.flush()
        summary = f"{actor} chose to send the email to {who} again"
    record(session, org_id=send.org_id, owner_id=send.owner_id, kind=EventKind.SEND_RESOLVED,
           summary=summary[:500],
           data={"send_id": send.id, "outcome": outcome, "was": was.value,
                 "resend_id": resend.id if resend is not None else None,
                 "resolved_by_id": user.id, "task_id": send.task_id,
                 "campaign_id": send.campaign_id, "contact_id": send.contact_id})
    session.flush()
    return Resolved(send, resend)
