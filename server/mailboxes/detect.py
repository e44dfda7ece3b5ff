"""What a synced message is: a task sent by hand, a reply, a bounce, an automatic reply (pure).

The mailbox sync (:mod:`server.mailboxes.sync`) reads messages from a rep's mailbox and asks this
module, with plain data, what each one means:

- :func:`observe` parses the raw RFC 5322 bytes once into an :class:`Observed` message;
- :func:`match_sent` matches a message the rep sent to one of their open email tasks, by the
  ``X-Relay-Task`` header, by our own ``Message-ID``, or by recipient + subject inside the
  task's window — in that order of confidence — and says which rule matched;
- :func:`match_reply` matches an incoming message to a campaign email it answers, by
  ``In-Reply-To``/``References``, by provider thread id, or by sender + subject;
- :func:`bounce_of` recognises delivery-status notifications (``multipart/report;
  report-type=delivery-status``, or a mailer-daemon message naming a failed recipient) and
  :func:`is_auto_reply` automatic answers (``Auto-Submitted`` other than ``no``,
  ``X-Autoreply``, ``X-Autorespond``, ``Precedence: auto_reply``, out-of-office subjects in
  several languages), which are not replies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from email.utils import getaddresses, parsedate_to_datetime

_MSG_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|tr|rv|ref|antw|odp|r)\s*(\[\d+\])?\s*:\s*)+",
                     re.I)
#: Out-of-office and automatic-answer subjects (English, French, German, Spanish, Italian,
#: Dutch, Portuguese, Swedish, Danish/Norwegian, Polish).
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|out of (the )?office|"
    r"away from (the )?office|on vacation|vacation reply|r[ée]ponse automatique|"
    r"absent(e)? du bureau|abwesenheitsnotiz|automatische antwort|abwesend|"
    r"respuesta autom[áa]tica|fuera de la oficina|risposta automatica|fuori ufficio|"
    r"automatisch antwoord|afwezig|resposta autom[áa]tica|fora do escrit[óo]rio|"
    r"automatiskt svar|autosvar|fr[åa]nvarande|automatisk svar|ikke til stede|"
    r"odpowied[źz] automatyczna|poza biurem)", re.I)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|maildaemon)@", re.I)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def normalise_subject(subject: str | None) -> str:
    """A subject without reply/forward prefixes, whitespace runs and case (for comparing)."""
    s = _PREFIX.sub("", subject or "")
    return " ".join(s.split()).casefold()


def message_ids(value: str | None) -> tuple[str, ...]:
    """Every ``<id@host>`` in a header value (In-Reply-To, References)."""
    return tuple(_MSG_ID.findall(value or ""))


@dataclass(frozen=True)
class Bounce:
    """A delivery-status notification: who failed, why, and which email it was about."""

    recipients: tuple[str, ...]
    status: str | None
    diagnostic: str | None
    original_message_id: str | None


@dataclass(frozen=True)
class Observed:
    """One message from a mailbox, reduced to what detection needs."""

    provider_id: str
    message_id: str | None
    refs: tuple[str, ...]
    thread_id: str | None
    sender: str | None
    recipients: tuple[str, ...]
    subject: str
    date: datetime | None
    relay_task: int | None
    relay_send: int | None
    auto_reply: bool
    bounce: Bounce | None
    #: ``X-Relay-Task`` when it is an opaque tag (the task is looked up by the sync).
    relay_tag: str | None = None


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _date(msg: EmailMessage) -> datetime | None:
    raw = msg.get("Date")
    if not raw:
        return None
    try:
        moment = parsedate_to_datetime(str(raw))
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _addresses(msg: EmailMessage, *names: str) -> tuple[str, ...]:
    values = [str(v) for n in names for v in msg.get_all(n, [])]
    return tuple(a.lower() for _, a in getaddresses(values) if "@" in a)


def is_auto_reply(msg: EmailMessage) -> bool:
    """Whether a message is an automatic answer (RFC 3834 and the common vendor headers)."""
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Auto-Response-Suppress"
                                                                     ) in ("All", "OOF"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() in ("auto_reply", "auto-reply"):
        return True
    return bool(_AUTO_SUBJECT.match(str(msg.get("Subject", ""))))


def _part_headers(part: EmailMessage) -> EmailMessage | None:
    """The headers carried by a message/rfc822 or text/rfc822-headers part."""
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            return inner[0]
    if ctype == "text/rfc822-headers":
        payload = part.get_payload(decode=True) or b""
        return BytesParser(policy=default).parsebytes(payload, headersonly=True)
    return None


def bounce_of(msg: EmailMessage) -> Bounce | None:
    """The failed delivery a DSN reports, or None when the message is not a bounce.

    Delay notices (``Action: delayed``) are not bounces.
    """
    report = (msg.get_content_type() == "multipart/report"
              and str(msg.get_param("report-type", "")).lower() == "delivery-status")
    sender = _addresses(msg, "From")
    daemon = bool(sender) and bool(_DAEMON.match(sender[0]))
    if not report and not daemon:
        return None
    failed: list[str] = []
    status = diagnostic = None
    original: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            fields: list[EmailMessage] = blocks if isinstance(blocks, list) else []
            if not fields:
                text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
                fields = [BytesParser(policy=default).parsebytes(chunk.encode(),
                                                                 headersonly=True)
                          for chunk in re.split(r"\r?\n\r?\n", text) if chunk.strip()]
            for block in fields:
                action = str(block.get("Action", "")).strip().lower()
                rcpt = str(block.get("Final-Recipient") or block.get("Original-Recipient")
                           or "")
                if action == "failed" and rcpt:
                    failed.append(rcpt.split(";", 1)[-1].strip().strip("<>").lower())
                    status = status or str(block.get("Status", "")).strip() or None
                    diag = block.get("Diagnostic-Code")
                    diagnostic = diagnostic or (str(diag).split(";", 1)[-1].strip()
                                                if diag else None)
        headers = _part_headers(part) if part is not msg else None
        if headers is not None and original is None:
            ids = message_ids(str(headers.get("Message-ID", "")))
            original = ids[0] if ids else None
    if not failed and daemon:
        # A plain-text bounce from a mailer daemon: the failed address is in its body.
        body = msg.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        if re.search(r"(could not be delivered|delivery (has )?failed|undeliverable|"
                     r"user unknown|no such user|does not exist|rejected)", text, re.I):
            found = re.findall(r"<?([A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?", text)
            failed = [a.lower() for a in found if not _DAEMON.match(a)][:1]
            m = _STATUS.search(text)
            status = m.group(1) if m else None
    if not failed:
        return None
    return Bounce(recipients=tuple(dict.fromkeys(failed)), status=status,
                  diagnostic=diagnostic, original_message_id=original)


def _tag(value: object) -> str | None:
    """An ``X-Relay-Task`` value that is an opaque task tag (not an old numeric id)."""
    from server.tasks.tags import TAG

    text = str(value or "").strip()
    return text if TAG.match(text) else None


def body_text(raw: bytes) -> str:
    """A message's plain-text body (its text/plain part), or "" when it has none."""
    msg = BytesParser(policy=default).parsebytes(raw)
    try:
        part = msg.get_body(("plain",))
        return str(part.get_content()) if part is not None else ""
    except (LookupError, ValueError):  # an unknown charset or a broken part
        return ""


def observe(raw: bytes, *, provider_id: str, thread_id: str | None = None) -> Observed:
    """Parse a message's bytes into what detection looks at."""
    msg = BytesParser(policy=default).parsebytes(raw)
    sender = _addresses(msg, "From")
    ids = message_ids(str(msg.get("Message-ID", "")))
    refs = tuple(dict.fromkeys(message_ids(str(msg.get("In-Reply-To", "")))
                               + message_ids(str(msg.get("References", "")))))
    bounce = bounce_of(msg)
    return Observed(
        provider_id=provider_id, message_id=ids[0] if ids else None, refs=refs,
        thread_id=thread_id, sender=sender[0] if sender else None,
        recipients=_addresses(msg, "To", "Cc"), subject=str(msg.get("Subject", "")),
        date=_date(msg), relay_task=_int(msg.get("X-Relay-Task")),
        relay_send=_int(msg.get("X-Relay-Send")),
        auto_reply=bounce is None and is_auto_reply(msg), bounce=bounce,
        relay_tag=_tag(msg.get("X-Relay-Task")),
    )


# -- matching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenTask:
    """An open email task of the mailbox's rep, as sent detection compares it."""

    task_id: int
    to_email: str
    subject: str | None
    message_id: str | None
    window_start: datetime


@dataclass(frozen=True)
class Match:
    """What a message matched, and the rule that matched it (kept with the match)."""

    target: int
    rule: str


def match_sent(obs: Observed, tasks: Sequence[OpenTask], now: datetime) -> Match | None:
    """The open task a message sent by the rep completes, or None.

    Rules, most certain first: ``x-relay-task`` (the header names the task), ``message-id``
    (our Message-ID recorded for the task), ``recipient+subject`` (sent to the task's contact
    with the task's subject, after the task was created and not in the future).
    """
    by_id = {t.task_id: t for t in tasks}
    if obs.relay_task is not None and obs.relay_task in by_id:
        return Match(obs.relay_task, "x-relay-task")
    if obs.message_id:
        for t in tasks:
            if t.message_id and t.message_id == obs.message_id:
                return Match(t.task_id, "message-id")
    subject = normalise_subject(obs.subject)
    if not subject or obs.date is None or obs.date > now:
        return None
    recipients = set(obs.recipients)
    hits = [t for t in tasks
            if t.to_email.lower() in recipients and t.subject is not None
            and normalise_subject(t.subject) == subject and obs.date >= t.window_start]
    if len(hits) == 1:
        return Match(hits[0].task_id, "recipient+subject")
    return None


@dataclass(frozen=True)
class SentEmail:
    """A campaign email that left (by the dispatcher or sent by hand and detected)."""

    enrollment_id: int
    contact_email: str
    subject: str | None
    message_id: str | None
    thread_id: str | None
    sent_at: datetime | None = None
    aliases: tuple[str, ...] = field(default=())


def match_reply(obs: Observed, sent: Iterable[SentEmail]) -> Match | None:
    """The enrollment an incoming message replies to, or None.

    Rules: ``in-reply-to`` (In-Reply-To/References name one of our emails), ``thread-id``
    (the provider puts it in the thread of one), ``sender+subject`` (from the contact, with
    the subject of an email sent to them, and not before it).
    """
    emails = list(sent)
    refs = set(obs.refs)
    for e in emails:
        if e.message_id and e.message_id in refs:
            return Match(e.enrollment_id, "in-reply-to")
    if obs.thread_id:
        # Anyone answering in the thread counts (a colleague the contact copied, too); the
        # caller passes only messages the rep did not send.
        for e in emails:
            if e.thread_id and e.thread_id == obs.thread_id:
                return Match(e.enrollment_id, "thread-id")
    subject = normalise_subject(obs.subject)
    if obs.sender and subject:
        hits = {e.enrollment_id for e in emails
                if e.contact_email.lower() == obs.sender and e.subject is not None
                and normalise_subject(e.subject) == subject
                and (e.sent_at is None or obs.date is None or obs.date >= e.sent_at)}
        if len(hits) == 1:
            return Match(hits.pop(), "sender+subject")
    return None


def match_bounce(bounce: Bounce, sent: Iterable[SentEmail]) -> Match | None:
    """The enrollment a bounce is about: by the original Message-ID, else by recipient."""
    emails = list(sent)
    if bounce.original_message_id:
        for e in emails:
            if e.message_id == bounce.original_message_id:
                return Match(e.enrollment_id, "dsn-message-id")
    failed = set(bounce.recipients)
    hits = {e.enrollment_id for e in emails if e.contact_email.lower() in failed}
    if len(hits) == 1:
        return Match(hits.pop(), "dsn-recipient")
    return None
