"""The prefill document of an email task: what a compose window (web, Gmail, Outlook) fills in.

:func:`build_prefill` is pure: plain data and ``now`` in, the document out (E1–E3, E5, E6).
:func:`prefill_for_task` is the service: one query fetches the task, its contact, campaign,
step, template, and the previous email step for a follow-up; documents are kept in a small
in-process LRU keyed by exactly those inputs, so a repeated request renders nothing.
"""

from __future__ import annotations

import functools
import hashlib
import html as html_lib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row, String, and_, bindparam, cast, select
from sqlalchemy.orm import Session, aliased

from server.accounts.models import ApiToken, User
from server.accounts.service import touch_token
from server.cache import Lru
from server.campaigns.models import Campaign, CampaignStep, EnrollmentStep, StepStatus
from server.campaigns.spec import StepType
from server.compose.links import compose_links, no_links
from server.compose.models import Template
from server.compose.render import OutputTooLarge, Rendered, TemplateInvalid, render_email
from server.contacts.models import Contact
from server.db import utcnow
from server.errors import Conflict
from server.mailboxes.lifecycle import Mailbox, MailboxStatus, MailMatch, MatchKind
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RE_PREFIX = re.compile(r"^\s*re\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class TemplateText:
    """A template as written: its subject and HTML body."""

    subject: str
    body_html: str


@dataclass(frozen=True)
class PreviousEmail:
    """The email step before a follow-up (E2, E3), as far as it is known.

    ``sent_at`` is when it really left (the outbox's ``sent_at``, or the moment the rep said
    they sent it); ``done_at`` is when its step was done; ``planned_at`` its planned moment.
    ``done`` is False when the step was skipped or is still open: it was then never sent.
    """

    template: TemplateText
    done: bool = False
    sent_at: datetime | None = None
    done_at: datetime | None = None
    planned_at: datetime | None = None
    message_id: str | None = None
    #: The provider's thread of the email that left (Gmail threadId, Graph conversationId).
    thread_id: str | None = None


@dataclass(frozen=True)
class PrefillInput:
    """Everything a prefill document is made of."""

    task_id: int
    task_type: StepType
    campaign_id: int
    campaign_name: str
    day: int
    step: int
    due_at: datetime
    contact: Mapping[str, Any]
    sender: Mapping[str, Any]
    sender_timezone: str
    template: TemplateText
    previous: PreviousEmail | None = None
    #: The rep's connected mailbox provider (``google``, ``microsoft``…), for threading.
    mailbox_provider: str | None = None


def contact_display_name(contact: Mapping[str, Any]) -> str:
    """The recipient's display name: first and last name, or empty."""
    return f"{contact.get('first_name') or ''} {contact.get('last_name') or ''}".strip()


def format_moment(moment: datetime, tz: str) -> str:
    """``Tue, 24 Nov 2026 at 11:00`` in time zone ``tz`` (fixed English, not the locale's)."""
    local = moment.astimezone(ZoneInfo(tz))
    return (f"{_DAYS[local.weekday()]}, {local.day} {_MONTHS[local.month - 1]} {local.year} "
            f"at {local:%H:%M}")


def reply_subject(subject: str) -> str:
    """``Re: `` + ``subject``, unless it already starts with ``Re:`` (E3); empty stays empty."""
    subject = subject.strip()
    if not subject or _RE_PREFIX.match(subject):
        return subject
    return f"Re: {subject}"


def previous_moment(prev: PreviousEmail, now: datetime) -> datetime:
    """When the previous email went out, or if it has not, when it was planned (E2)."""
    if prev.sent_at is not None:
        return prev.sent_at
    if prev.done and prev.done_at is not None:
        return prev.done_at
    return prev.planned_at or now


def quote_block(rendered: Rendered, moment: datetime, sender: Mapping[str, Any],
                tz: str) -> tuple[str, str]:
    """The quoted HTML and text of a previous email under an "On <date>, <sender> wrote:" line."""
    who = sender.get("name") or sender.get("email") or ""
    line = f"On {format_moment(moment, tz)}, {who} wrote:"
    quoted_html = (f'<div class="relay-quote"><p>{html_lib.escape(line)}</p>'
                   '<blockquote style="margin:0 0 0 .8ex;border-left:1px solid #ccc;'
                   f'padding-left:1ex">{rendered.html}</blockquote></div>')
    body = rendered.text.replace("\r\n", "\n").rstrip("\n")
    quoted_text = line + "\n" + "\n".join(f"> {t}" if t else ">" for t in body.split("\n"))
    return quoted_html, quoted_text


def _etag(doc: Mapping[str, Any]) -> str:
    """A strong validator: the SHA-256 of the document's canonical JSON."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:40]


def build_prefill(data: PrefillInput, *, now: datetime) -> dict[str, Any]:
    """The prefill document of an email task (E1–E3, E5, E6); pure.

    ``html`` and ``text`` are the whole body: the step's rendered template and, for a
    follow-up, the previous email step's *template* rendered for the same contact as a quoted
    block (``follow_up.quoted_html`` / ``quoted_text`` hold that block alone). A missing field
    (E5) blocks the document: subject, body and quote are empty, ``blocked.fields`` names every
    missing field and no link is offered. ``now`` only stands in for the moment of a previous
    email that has neither been sent nor planned.
    """
    own = render_email(data.template.subject, data.template.body_html, data.contact,
                       data.sender)
    missing = list(own.missing)
    email = (data.contact.get("email") or "").strip()
    if not email:
        missing.append("email")
    subject, html, text = own.subject, own.html, own.text

    follow_up: dict[str, Any] | None = None
    if data.previous is not None:
        prev = data.previous
        earlier = render_email(prev.template.subject, prev.template.body_html, data.contact,
                               data.sender)
        missing += earlier.missing
        quoted_html, quoted_text = quote_block(earlier, previous_moment(prev, now),
                                               data.sender, data.sender_timezone)
        if not subject.strip():
            subject = reply_subject(earlier.subject)
        html = f"{html}\n{quoted_html}" if html else quoted_html
        text = f"{text.rstrip()}\n\n{quoted_text}" if text.strip() else quoted_text
        # Threading (E3) needs the Message-ID of an email that really left.
        message_id = prev.message_id if prev.done else None
        thread = prev.thread_id if prev.done else None
        follow_up = {
            "quoted_html": quoted_html,
            "quoted_text": quoted_text,
            "in_reply_to": message_id,
            "references": message_id,
            "thread": {
                "gmail_thread_id": thread if data.mailbox_provider == "google" else None,
                "outlook_conversation_id": (thread if data.mailbox_provider == "microsoft"
                                            else None),
            },
        }

    missing = list(dict.fromkeys(missing))
    blocked = {"fields": missing} if missing else None
    if blocked:
        subject = html = text = ""
        if follow_up is not None:
            follow_up["quoted_html"] = follow_up["quoted_text"] = ""
        links = no_links()
    else:
        links = compose_links([email], subject, text)
    name = contact_display_name(data.contact)
    doc: dict[str, Any] = {
        "task": {
            "id": data.task_id,
            "type": data.task_type.value,
            "campaign": {"id": data.campaign_id, "name": data.campaign_name},
            "day": data.day,
            "step": data.step,
            "due_at": data.due_at.isoformat(),
        },
        "to": [{"email": email, "name": name}] if email else [],
        "cc": [],
        "bcc": [],
        "subject": subject,
        "html": html,
        "text": text,
        "prompts": list(own.prompts),
        "blocked": blocked,
        "follow_up": follow_up,
        "links": links,
    }
    doc["etag"] = _etag(doc)
    return doc


# -- the service ----------------------------------------------------------------------------


# Prepared documents, keyed by every input they are made of: the inputs themselves (not ids
# and versions), so an entry can never be stale. Any change to the task, contact, campaign
# name, templates, previous email or sender makes a different key, and the old entry just
# ages out. Documents made from big templates are not kept.
DOCUMENTS: Lru[dict[str, Any]] = Lru(1024, max_input=64 * 1024)

_step = aliased(EnrollmentStep, name="es")
_cstep = aliased(CampaignStep, name="cs")
_tpl = aliased(Template, name="tpl")
_prev_step = aliased(EnrollmentStep, name="pes")
_prev_cstep = aliased(CampaignStep, name="pcs")
_prev_tpl = aliased(Template, name="ptpl")
_prev_task = aliased(Task, name="ptask")
_prev_send = aliased(ScheduledSend, name="psend")
_prev_match = aliased(MailMatch, name="pmatch")


_CALLER = (User.id.label("user_id"), User.name.label("user_name"),
           User.title.label("user_title"), User.email.label("user_email"),
           User.timezone.label("user_timezone"), ApiToken.id.label("token_id"),
           ApiToken.last_used_at.label("token_used_at"))


@functools.cache
def _prefill_query(by_token: bool = False) -> Any:
    """The one query behind a prefill: only the columns the document is made of.

    The step is the campaign's step at the enrollment step's position; the previous email of
    a follow-up is the step one position earlier, with its task or outbox row if any. The
    contact's custom fields come as JSON text, parsed only when a document is built. With
    ``by_token`` the caller is found in the same query from the hash of their API token
    (parameter ``token_hash``), else the owner is parameter ``owner_id`` (DESIGN.md: auth,
    ownership and the data join in one query). It selects columns, not entities, so it runs
    on ``session.connection()``, past the ORM's result layer. Built once: building it costs
    about half a millisecond, and the one object keeps its SQLAlchemy cache key.
    """
    follow = _cstep.follow_up.is_(True)
    stmt = (
        select(
            Task.id, Task.type, Task.campaign_id, Task.day, Task.step_in_day, Task.due_at,
            Campaign.name.label("campaign_name"),
            Contact.email, Contact.first_name, Contact.last_name, Contact.title,
            Contact.company, cast(Contact.custom_fields, String).label("custom_fields"),
            _tpl.subject, _tpl.body_html,
            _prev_cstep.type.label("prev_type"),
            _prev_tpl.subject.label("prev_subject"), _prev_tpl.body_html.label("prev_body"),
            _prev_step.status.label("prev_status"), _prev_step.done_at.label("prev_done_at"),
            _prev_step.planned_at.label("prev_planned_at"),
            _prev_task.sent_at.label("prev_task_sent_at"),
            _prev_task.message_id.label("prev_message_id"),
            _prev_send.status.label("prev_send_status"),
            _prev_send.sent_at.label("prev_send_sent_at"),
            _prev_send.message_id.label("prev_send_message_id"),
            _prev_send.thread_id.label("prev_send_thread_id"),
            _prev_match.thread_id.label("prev_task_thread_id"),
            Mailbox.provider.label("mailbox_provider"),
        )
        .select_from(Task)
        .join(Campaign, Campaign.id == Task.campaign_id)
        .join(Contact, Contact.id == Task.contact_id)
        .join(_step, _step.id == Task.enrollment_step_id)
        .join(_cstep, and_(_cstep.campaign_id == Task.campaign_id,
                           _cstep.position == _step.position))
        .outerjoin(_tpl, _tpl.id == _cstep.template_id)
        .outerjoin(_prev_cstep, and_(follow, _prev_cstep.campaign_id == Task.campaign_id,
                                     _prev_cstep.position == _step.position - 1))
        .outerjoin(_prev_tpl, _prev_tpl.id == _prev_cstep.template_id)
        .outerjoin(_prev_step, and_(follow, _prev_step.enrollment_id == _step.enrollment_id,
                                    _prev_step.position == _step.position - 1))
        .outerjoin(_prev_task, _prev_task.enrollment_step_id == _prev_step.id)
        .outerjoin(_prev_send, _prev_send.enrollment_step_id == _prev_step.id)
        # The thread of a previous email the rep sent by hand, as the mailbox sync found it.
        .outerjoin(_prev_match, and_(_prev_match.task_id == _prev_task.id,
                                     _prev_match.kind == MatchKind.SENT))
        .outerjoin(Mailbox, and_(Mailbox.owner_id == Task.owner_id,
                                 Mailbox.status == MailboxStatus.CONNECTED))
        .where(Task.id == bindparam("task_id"))
    )
    if not by_token:
        return stmt.where(Task.owner_id == bindparam("owner_id"))
    return (stmt.add_columns(*_CALLER)
            .join(User, User.id == Task.owner_id)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == bindparam("token_hash")))


@functools.cache
def _token_query() -> Any:
    """The caller of an API token, as columns (the same lookup the prefill query joins)."""
    return (select(*_CALLER).select_from(User).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == bindparam("token_hash")))


def _connection(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def token_caller(db: Session | Connection, token_hash: str) -> int | None:
    """The id of the user whose API token hashes to ``token_hash``, or None (one query)."""
    row = _connection(db).execute(_token_query(), {"token_hash": token_hash}).first()
    if row is None:
        return None
    touch_token(db, row.token_id, row.token_used_at, utcnow())
    return int(row.user_id)


def _sender(user: User) -> dict[str, Any]:
    return {"name": user.name, "title": user.title, "email": user.email}


def _previous(row: Row[Any]) -> PreviousEmail | None:
    """The previous email of a follow-up step, or None (not a follow-up, or not after an email)."""
    if row.prev_type is not StepType.EMAIL or row.prev_status is None:
        return None
    sent_by_outbox = row.prev_send_status is SendStatus.SENT
    done = row.prev_status is StepStatus.DONE
    return PreviousEmail(
        template=TemplateText(row.prev_subject or "", row.prev_body or ""),
        done=done,
        sent_at=row.prev_send_sent_at if sent_by_outbox else (
            row.prev_task_sent_at if done else None),
        done_at=row.prev_done_at,
        planned_at=row.prev_planned_at,
        # An automatic email carries the dispatcher's Message-ID and thread; one the rep sent
        # by hand, what they (or the mailbox sync) recorded on the task.
        message_id=(row.prev_send_message_id if sent_by_outbox else row.prev_message_id)
        if done else None,
        thread_id=(row.prev_send_thread_id if sent_by_outbox else row.prev_task_thread_id)
        if done else None,
    )


def prefill_input(row: Row[Any], sender: Mapping[str, Any], timezone: str) -> PrefillInput:
    """Turn the prefill query's row and the task owner's details into :class:`PrefillInput`."""
    custom = json.loads(row.custom_fields) if row.custom_fields else {}
    contact = {"first_name": row.first_name, "last_name": row.last_name, "title": row.title,
               "company": row.company, "email": row.email, "custom_fields": custom or {}}
    return PrefillInput(
        task_id=row.id, task_type=row.type, campaign_id=row.campaign_id,
        campaign_name=row.campaign_name, day=row.day, step=row.step_in_day, due_at=row.due_at,
        contact=contact, sender=sender, sender_timezone=timezone,
        template=TemplateText(row.subject or "", row.body_html or ""),
        previous=_previous(row),
        mailbox_provider=row.mailbox_provider.value if row.mailbox_provider else None,
    )


def _document(row: Row[Any], user_id: int, sender: Mapping[str, Any], timezone: str,
              now: datetime | None) -> dict[str, Any]:
    """The document of a prefill query row: from the cache, or built and kept there."""
    if row.type is not StepType.EMAIL:
        raise Conflict(f"task {row.id} is a {row.type.value} task; only email tasks have a "
                       "prefill document")
    # The document's inputs: the data columns (not the token's last use) and the sender.
    data = tuple(row)[:len(_prefill_query().selected_columns)]
    key = (data, user_id, sender["name"], sender["title"], sender["email"], timezone)
    doc = DOCUMENTS.get(key)
    if doc is None:
        try:
            doc = build_prefill(prefill_input(row, sender, timezone), now=now or utcnow())
        except (TemplateInvalid, OutputTooLarge) as exc:
            # Stored before templates were checked, or grown too big for this contact.
            raise Conflict(f"the email of task {row.id} cannot be rendered: {exc}; fix its "
                           "template on the templates page") from None
        size = sum(len(v) for v in (row.body_html, row.prev_body, row.custom_fields) if v)
        DOCUMENTS.put(key, doc, size)
    return doc


def prefill_for_task(db: Session | Connection, user: User, task_id: int,
                     now: datetime | None = None) -> dict[str, Any] | None:
    """The prefill document of one of ``user``'s email tasks; None when it is not theirs.

    Raises Conflict for a call, InMail or custom task (they have no email to prefill). One
    query; a document already built from identical inputs is served from memory.
    """
    row = _connection(db).execute(
        _prefill_query(), {"task_id": task_id, "owner_id": user.id}).first()
    if row is None:
        return None
    return _document(row, user.id, _sender(user), user.timezone, now)


def prefill_for_token(db: Session | Connection, token_hash: str, task_id: int,
                      now: datetime | None = None) -> dict[str, Any] | None:
    """:func:`prefill_for_task` for the owner of an API token, found in the same one query.

    None when the token is unknown or the task is not its owner's: the caller tells the two
    apart (401 or 404) on that rare path.
    """
    row = _connection(db).execute(
        _prefill_query(True), {"task_id": task_id, "token_hash": token_hash}).first()
    if row is None:
        return None
    touch_token(db, row.token_id, row.token_used_at, utcnow())
    sender = {"name": row.user_name, "title": row.user_title, "email": row.user_email}
    return _document(row, row.user_id, sender, row.user_timezone, now)
