"""The mailbox sync: sent, reply and bounce detection for every connected mailbox.

``relay worker`` calls :func:`sync_mailboxes` on every tick. Each connected mailbox is synced
once every ``MAIL_SYNC_SECONDS`` (default 60), by one worker at a time: when its next sync is
due is kept in the database (``mailbox_sync``, claimed under a lease with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), so several workers share the mailboxes and a restart changes nothing;
a failing mailbox waits longer after each failure. It reads from a per-folder cursor kept in
``mailbox_cursor``:

- Gmail: ``history.list`` from the stored ``startHistoryId`` (folder ``history``);
- Microsoft: a Graph delta link on Sent Items (``sentitems``) and on the Inbox (``inbox``);
- SMTP with IMAP: the last UID seen in the Sent folder and in INBOX (``uidvalidity:uid``).

A first sync only records where the mailbox is now: mail from before the connection is not
replayed. Each new message is parsed once (:func:`server.mailboxes.detect.observe`); what it
matched is stored in ``mail_match`` with the rule that matched, which also makes a replayed
message (a crash before the cursor was saved) a no-op.

What a match does: a task sent by hand is completed with the message's real time
(``complete_task(..., sent_at=, via=GMAIL/OUTLOOK)``, T3) and the campaign moves on; a reply
applies the campaign's ``on_reply`` and a bounce its ``on_bounce`` (leaving the campaign,
X1, or only a Live Feed entry for ``continue``); automatic replies change nothing.
"""

from __future__ import annotations

import imaplib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.models import Campaign, Enrollment, EnrollmentStatus, OnBounce, OnReply
from server.campaigns.progress import contact_name, leave
from server.campaigns.spec import StepType
from server.contacts.models import Contact
from server.errors import Conflict, Invalid
from server.feed.models import EventKind
from server.feed.service import record
from server.leases import Claim, claim, release
from server.mailboxes import detect
from server.mailboxes.lifecycle import (
    Mailbox,
    MailboxStatus,
    MailboxSync,
    MailMatch,
    MatchKind,
    Provider,
    get_cursor,
    mark_needs_reauth,
    set_cursor,
)
from server.sending.models import ScheduledSend, SendStatus
from server.sending.transport import PermanentError, ReauthRequired, TransportError
from server.tasks.models import CompletedVia, Task, TaskStatus
from server.tasks.tags import task_id_of

log = logging.getLogger(__name__)

#: At most this many new IMAP messages per folder and pass (the rest come next pass).
MAX_MESSAGES_PER_PASS = 200


@dataclass
class SyncResult:
    """What one sync pass did."""

    mailboxes: int = 0
    messages: int = 0
    sent: int = 0
    replies: int = 0
    bounces: int = 0
    auto_replies: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Incoming:
    """A message fetched from a mailbox: its bytes, ids, and whether the rep sent it."""

    provider_id: str
    raw: bytes
    thread_id: str | None
    outgoing: bool


@dataclass
class Fetched:
    """New messages of one mailbox, and the cursors to save once they are applied."""

    messages: list[Incoming] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)


#: The cursor folders of each provider.
FOLDERS: dict[Provider, tuple[str, ...]] = {
    Provider.GOOGLE: ("history",),
    Provider.MICROSOFT: ("sentitems", "inbox"),
    Provider.SMTP: ("imap-sent", "imap-inbox"),
}


def _fetch_gmail(transport: Any, cursors: dict[str, str | None], now: datetime) -> Fetched:
    out = Fetched()
    cursor = cursors.get("history")
    if cursor is None:
        out.cursors["history"] = transport.profile_history_id()
        return out
    try:
        pages = list(transport.history(cursor))
    except PermanentError as exc:
        if not exc.reason.startswith("Gmail 404"):
            raise
        # The history id expired (Gmail keeps about a week): start again from now.
        log.warning("Gmail history %s expired; resuming from now", cursor)
        out.cursors["history"] = transport.profile_history_id()
        return out
    seen: set[str] = set()
    for page in pages:
        for mid in page.message_ids:
            if mid in seen:
                continue
            seen.add(mid)
            try:
                raw, meta = transport.raw_message(mid)
            except PermanentError as exc:
                if exc.reason.startswith("Gmail 404"):
                    continue  # deleted since: nothing to detect, and no reason to stall
                raise
            labels = set(meta.get("labelIds") or [])
            if "DRAFT" not in labels:
                out.messages.append(Incoming(mid, raw, meta.get("threadId"), "SENT" in labels))
    if pages:
        out.cursors["history"] = pages[-1].history_id
    return out


def _fetch_graph(transport: Any, cursors: dict[str, str | None], now: datetime) -> Fetched:
    out = Fetched()
    fresh = now - timedelta(minutes=5)
    for folder, outgoing in (("sentitems", True), ("inbox", False)):
        link = cursors.get(folder)
        # A first walk only looks for where "now" is: nothing older is replayed.
        try:
            pages = list(transport.delta(folder, link, fresh if link is None else None))
        except PermanentError as exc:
            if link is None or not exc.reason.startswith("Graph 410"):
                raise
            # The delta token expired (410 Gone, "resync required"): start again from now
            # rather than stall; what happened in between is not replayed.
            log.warning("Graph delta of %s expired; resuming from now", folder)
            link = None
            pages = list(transport.delta(folder, None, fresh))
        if link is not None:
            for page in pages:
                for item in page.messages:
                    if item.get("isDraft"):
                        continue
                    try:
                        raw = transport.raw_message(item["id"])
                    except PermanentError as exc:
                        if exc.reason.startswith("Graph 404"):
                            continue  # deleted or moved since the delta was taken
                        raise
                    out.messages.append(Incoming(item["id"], raw, item.get("conversationId"),
                                                 outgoing))
        final = pages[-1].delta_link if pages else None
        if final:
            out.cursors[folder] = final
    return out


def _fetch_imap(transport: Any, cursors: dict[str, str | None], now: datetime) -> Fetched:
    from server.sending.providers.smtp import imap_scope

    out = Fetched()
    cfg = transport.config
    with imap_scope():  # both folders over one connection (or the caller's)
        for folder, key, outgoing in ((cfg.sent_folder, "imap-sent", True),
                                      ("INBOX", "imap-inbox", False)):
            with transport.imap(folder) as (imap, ok):
                if ok:
                    _read_imap_folder(imap, key, outgoing, cursors.get(key), out)
    return out


def _read_imap_folder(imap: imaplib.IMAP4, key: str, outgoing: bool, cursor: str | None,
                      out: Fetched) -> None:
    """The new messages of the selected folder since ``cursor``, into ``out``."""
    validity = _untagged(imap, "UIDVALIDITY")
    known = cursor is not None and cursor.split(":")[0] == validity
    last = int(cursor.split(":")[1]) if known and cursor else 0
    typ, data = imap.uid("SEARCH", None, f"UID {last + 1}:*")
    uids = sorted(int(u) for u in (data[0] or b"").split()) if typ == "OK" else []
    uids = [u for u in uids if u > last]
    if not known:
        # First sync (or the folder was rebuilt): remember where it is now.
        out.cursors[key] = f"{validity}:{uids[-1] if uids else 0}"
        return
    for uid in uids[:MAX_MESSAGES_PER_PASS]:
        typ, fetched = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        raw = next((part[1] for part in fetched or [] if isinstance(part, tuple)), None)
        if typ == "OK" and raw:
            out.messages.append(Incoming(f"{key}:{validity}:{uid}", raw, None, outgoing))
        out.cursors[key] = f"{validity}:{uid}"


def _untagged(imap: imaplib.IMAP4, name: str) -> str:
    value = imap.response(name)[1]
    item = value[0] if value else b"0"
    return item.decode() if isinstance(item, bytes) else str(item or "0")


def fetch(mb: Mailbox, transport: Any, cursors: dict[str, str | None],
          now: datetime) -> Fetched | None:
    """Read a mailbox's new messages from its cursors (provider calls only, no database).

    None when the mailbox has nothing to sync (the local outbox, SMTP without IMAP).
    """
    if mb.provider is Provider.GOOGLE:
        return _fetch_gmail(transport, cursors, now)
    if mb.provider is Provider.MICROSOFT:
        return _fetch_graph(transport, cursors, now)
    if mb.provider is Provider.SMTP and getattr(transport, "config", None) is not None \
            and transport.config.imap_host:
        return _fetch_imap(transport, cursors, now)
    return None


def load_cursors(session: Session, mb: Mailbox) -> dict[str, str | None]:
    """The saved cursors of a mailbox's folders (None where it was never synced)."""
    return {folder: get_cursor(session, mb.id, folder)
            for folder in FOLDERS.get(Provider(mb.provider), ())}


# -- applying matches -----------------------------------------------------------------------


def _seen(session: Session, mb: Mailbox, provider_id: str) -> bool:
    return session.scalar(select(MailMatch.id).where(
        MailMatch.mailbox_id == mb.id, MailMatch.provider_message_id == provider_id[:255]
    ).limit(1)) is not None


def _remember(session: Session, mb: Mailbox, msg: Incoming, obs: detect.Observed,
              kind: MatchKind, rule: str, *, now: datetime, task_id: int | None = None,
              send_id: int | None = None, enrollment_id: int | None = None) -> bool:
    """Store a match (once per message and kind); False when another pass stored it first."""
    try:
        with session.begin_nested():
            session.add(MailMatch(
                org_id=mb.org_id, owner_id=mb.owner_id, mailbox_id=mb.id, kind=kind,
                provider_message_id=msg.provider_id[:255],
                message_id=(obs.message_id or None), thread_id=msg.thread_id,
                task_id=task_id, send_id=send_id, enrollment_id=enrollment_id,
                matched_by=rule, occurred_at=_moment(obs, now), created_at=now))
    except IntegrityError:
        return False
    return True


def _moment(obs: detect.Observed, now: datetime) -> datetime:
    """When the message happened: its Date, never in the future."""
    return min(obs.date, now) if obs.date is not None else now


def _open_tasks(session: Session, mb: Mailbox, obs: detect.Observed, user: User
                ) -> list[detect.OpenTask]:
    """The rep's open email tasks this sent message could be (by header or recipient)."""
    conds = []
    if obs.relay_task is not None:
        conds.append(Task.id == obs.relay_task)
    if obs.recipients:
        conds.append(Contact.email.in_(obs.recipients))
    if obs.message_id:
        conds.append(Task.message_id == obs.message_id)
    if not conds:
        return []
    rows = session.execute(
        select(Task.id, Task.message_id, Task.created_at, Contact.email)
        .join(Contact, Contact.id == Task.contact_id)
        .where(Task.owner_id == mb.owner_id, Task.status == TaskStatus.OPEN,
               Task.type == StepType.EMAIL, or_(*conds))
        .limit(50)
    ).all()
    from server.compose.prefill import prefill_for_task

    out = []
    for row in rows:
        doc = prefill_for_task(session, user, row.id)
        subject = (doc or {}).get("subject") or None
        out.append(detect.OpenTask(task_id=row.id, to_email=(row.email or "").lower(),
                                   subject=subject, message_id=row.message_id,
                                   window_start=row.created_at))
    return out


def _sent_emails(session: Session, mb: Mailbox, obs: detect.Observed,
                 recipients: tuple[str, ...] = ()) -> list[detect.SentEmail]:
    """Campaign emails of this rep that a message could answer or bounce."""
    refs = list(obs.refs)
    if obs.bounce and obs.bounce.original_message_id:
        refs.append(obs.bounce.original_message_id)
    people = [a for a in (*recipients, obs.sender or "") if a]
    out: list[detect.SentEmail] = []
    conds = []
    if refs:
        conds.append(ScheduledSend.message_id.in_(refs))
    if obs.thread_id:
        conds.append(ScheduledSend.thread_id == obs.thread_id)
    if people:
        conds.append(ScheduledSend.to_email.in_(people))
    if conds:
        for s in session.scalars(select(ScheduledSend).where(
                ScheduledSend.owner_id == mb.owner_id, ScheduledSend.status == SendStatus.SENT,
                ScheduledSend.enrollment_id.is_not(None), or_(*conds)).limit(100)):
            assert s.enrollment_id is not None
            out.append(detect.SentEmail(enrollment_id=s.enrollment_id, contact_email=s.to_email,
                                        subject=s.subject, message_id=s.message_id,
                                        thread_id=s.thread_id, sent_at=s.sent_at))
    conds = []
    if refs:
        conds.append(MailMatch.message_id.in_(refs))
    if obs.thread_id:
        conds.append(MailMatch.thread_id == obs.thread_id)
    if people:
        conds.append(Contact.email.in_(people))
    if conds:
        rows = session.execute(
            select(MailMatch.enrollment_id, MailMatch.message_id, MailMatch.thread_id,
                   MailMatch.occurred_at, Contact.email)
            .join(Task, Task.id == MailMatch.task_id)
            .join(Contact, Contact.id == Task.contact_id)
            .where(MailMatch.owner_id == mb.owner_id, MailMatch.kind == MatchKind.SENT,
                   MailMatch.enrollment_id.is_not(None), or_(*conds)).limit(100)).all()
        for r in rows:
            out.append(detect.SentEmail(enrollment_id=r.enrollment_id,
                                        contact_email=r.email or "", subject=None,
                                        message_id=r.message_id, thread_id=r.thread_id,
                                        sent_at=r.occurred_at))
    if refs:
        rows = session.execute(
            select(Task.enrollment_id, Task.message_id, Task.sent_at, Contact.email)
            .join(Contact, Contact.id == Task.contact_id)
            .where(Task.owner_id == mb.owner_id, Task.message_id.in_(refs))).all()
        for r in rows:
            out.append(detect.SentEmail(enrollment_id=r.enrollment_id,
                                        contact_email=r.email or "", subject=None,
                                        message_id=r.message_id, thread_id=None,
                                        sent_at=r.sent_at))
    return out


def _via(mb: Mailbox) -> CompletedVia:
    return {Provider.GOOGLE: CompletedVia.GMAIL,
            Provider.MICROSOFT: CompletedVia.OUTLOOK}.get(mb.provider, CompletedVia.MANUAL)


def _apply_sent(session: Session, mb: Mailbox, user: User, msg: Incoming,
                obs: detect.Observed, now: datetime) -> bool:
    from server.tasks.service import complete_task

    if detect_send_id(obs) is not None:
        return False  # one of the dispatcher's own emails: it recorded the send itself
    if obs.relay_tag is not None:  # X-Relay-Task carries the task's opaque tag
        obs = replace(obs, relay_task=task_id_of(session, obs.relay_tag))
    match = detect.match_sent(obs, _open_tasks(session, mb, obs, user), now)
    if match is None:
        return False
    task = session.get(Task, match.target)
    assert task is not None
    if not _remember(session, mb, msg, obs, MatchKind.SENT, match.rule, now=now,
                     task_id=task.id, enrollment_id=task.enrollment_id):
        return False
    done = complete_task(session, user, task.id, now=now, sent_at=_moment(obs, now),
                         message_id=obs.message_id, via=_via(mb))
    log.info("mailbox %s: task %s sent by hand (matched by %s)", mb.id, task.id, match.rule)
    return done


def detect_send_id(obs: detect.Observed) -> int | None:
    """The scheduled send a message is, when it is one of the dispatcher's own emails."""
    from server.sending.headers import send_id_of

    return send_id_of(obs.message_id)


def _enrollment(session: Session, enrollment_id: int) -> tuple[Enrollment, Campaign,
                                                               Contact] | None:
    enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None:
        return None
    campaign = session.get(Campaign, enrollment.campaign_id)
    contact = session.get(Contact, enrollment.contact_id)
    if campaign is None or contact is None:
        return None
    return enrollment, campaign, contact


def _matched_enrollment(session: Session, mb: Mailbox, msg: Incoming, obs: detect.Observed,
                        match: detect.Match | None, kind: MatchKind, now: datetime
                        ) -> tuple[Enrollment, Campaign, Contact] | None:
    """The enrollment a reply or bounce ``match`` points at, once its match is recorded.

    None when nothing matched, the enrollment is gone, or this message was already applied.
    """
    if match is None:
        return None
    found = _enrollment(session, match.target)
    if found is None:
        return None
    if not _remember(session, mb, msg, obs, kind, match.rule, now=now,
                     enrollment_id=found[0].id):
        return None
    return found


def _apply_reply(session: Session, mb: Mailbox, msg: Incoming, obs: detect.Observed,
                 now: datetime) -> bool:
    match = detect.match_reply(obs, _sent_emails(session, mb, obs))
    found = _matched_enrollment(session, mb, msg, obs, match, MatchKind.REPLY, now)
    if found is None:
        return False
    enrollment, campaign, contact = found
    action = OnReply(campaign.on_reply)
    record(session, org_id=mb.org_id, owner_id=mb.owner_id, kind=EventKind.REPLY_RECEIVED,
           summary=f"{contact_name(contact)} replied — {campaign.name}"[:500],
           data={"enrollment_id": enrollment.id, "campaign_id": campaign.id,
                 "contact_id": contact.id, "matched_by": match.rule,
                 "message_id": obs.message_id, "on_reply": action.value,
                 "received_at": _moment(obs, now).isoformat()})
    _reply_to_salesforce(session, mb, msg, obs, campaign, contact, now)
    if action is not OnReply.CONTINUE:
        reason = "replied" if action is OnReply.END else "replied (success)"
        leave(session, enrollment.id, EnrollmentStatus.REPLIED, reason, now)
    return True


def _reply_to_salesforce(session: Session, mb: Mailbox, msg: Incoming, obs: detect.Observed,
                        campaign: Campaign, contact: Contact, now: datetime) -> None:
    """Queue the reply's Salesforce activity (nothing when the org does not sync)."""
    from server.salesforce import enqueue

    enqueue.reply_detected(
        session, org_id=mb.org_id, owner_id=mb.owner_id, contact_id=contact.id,
        subject=obs.subject, message_id=obs.message_id or f"{mb.id}:{msg.provider_id}",
        received_at=_moment(obs, now), now=now, body_text=detect.body_text(msg.raw),
        campaign_id=campaign.id)


def _apply_bounce(session: Session, mb: Mailbox, msg: Incoming, obs: detect.Observed,
                  now: datetime) -> bool:
    assert obs.bounce is not None
    match = detect.match_bounce(obs.bounce,
                                _sent_emails(session, mb, obs, obs.bounce.recipients))
    found = _matched_enrollment(session, mb, msg, obs, match, MatchKind.BOUNCE, now)
    if found is None:
        return False
    enrollment, campaign, contact = found
    action = OnBounce(campaign.on_bounce)
    why = " ".join(p for p in (obs.bounce.status, obs.bounce.diagnostic) if p)[:300]
    record(session, org_id=mb.org_id, owner_id=mb.owner_id, kind=EventKind.BOUNCE_RECEIVED,
           summary=f"Email to {contact_name(contact)} bounced — {campaign.name}"[:500],
           data={"enrollment_id": enrollment.id, "campaign_id": campaign.id,
                 "contact_id": contact.id, "matched_by": match.rule, "status": why,
                 "recipients": list(obs.bounce.recipients), "on_bounce": action.value})
    if action is OnBounce.REMOVE:
        leave(session, enrollment.id, EnrollmentStatus.BOUNCED,
              f"bounced: {why}" if why else "bounced", now)
    return True


def process(session: Session, mb: Mailbox, user: User, msg: Incoming, now: datetime,
            result: SyncResult) -> None:
    """Detect what one message is and act on it (idempotent per message)."""
    result.messages += 1
    if _seen(session, mb, msg.provider_id):
        return
    obs = detect.observe(msg.raw, provider_id=msg.provider_id, thread_id=msg.thread_id)
    own = obs.sender == mb.email.lower()
    if msg.outgoing or own:
        if _apply_sent(session, mb, user, msg, obs, now):
            result.sent += 1
        return
    if obs.bounce is not None:
        if _apply_bounce(session, mb, msg, obs, now):
            result.bounces += 1
        return
    if obs.auto_reply:
        match = detect.match_reply(obs, _sent_emails(session, mb, obs))
        if match is not None and _remember(session, mb, msg, obs, MatchKind.AUTO_REPLY,
                                           match.rule, now=now, enrollment_id=match.target):
            result.auto_replies += 1
        return
    if _apply_reply(session, mb, msg, obs, now):
        result.replies += 1


def apply(session: Session, mb: Mailbox, fetched: Fetched, now: datetime,
          result: SyncResult) -> None:
    """Act on fetched messages, then save the cursors (in the caller's transaction)."""
    user = session.get(User, mb.owner_id)
    if user is None:
        return
    result.mailboxes += 1
    for msg in fetched.messages:
        try:
            with session.begin_nested():
                process(session, mb, user, msg, now, result)
        except (Conflict, Invalid, LookupError, ValueError) as exc:
            # One message the campaign cannot take (the task's email is being sent by the
            # dispatcher right now, say) must not stop the mailbox's sync for good: it is
            # reported and the pass goes on.
            log.warning("mailbox %s: message %s not applied: %s", mb.id, msg.provider_id, exc)
            result.errors.append(f"mailbox {mb.id}: message {msg.provider_id}: {exc}")
    for folder, cursor in fetched.cursors.items():
        set_cursor(session, mb.id, folder, cursor, now)


def sync_mailbox(session: Session, mb: Mailbox, transport: Any, now: datetime,
                 result: SyncResult) -> None:
    """Sync one mailbox in one session: read its cursors, fetch, apply. Caller commits."""
    fetched = fetch(mb, transport, load_cursors(session, mb), now)
    if fetched is not None:
        apply(session, mb, fetched, now, result)


#: How long a claimed mailbox stays with the worker that claimed it (at least
#: ``MAIL_SYNC_SECONDS``): a worker that dies mid-sync lets go of its mailboxes after this.
SYNC_LEASE = timedelta(minutes=5)
#: How many due mailboxes a worker claims at a time (the others stay for other workers).
SYNC_BATCH = 10
#: The longest wait after failed syncs (the wait doubles from ``MAIL_SYNC_SECONDS``).
MAX_SYNC_BACKOFF = timedelta(hours=1)


def sync_backoff(every: float, failures: int) -> timedelta:
    """How long to wait before the next try after ``failures`` failed syncs in a row.

    ``MAIL_SYNC_SECONDS`` doubled per failure (2×, 4×, 8× …), at most an hour (or one
    period, when the period is longer than that).
    """
    seconds = every * 2 ** min(max(failures, 0), 30)
    return timedelta(seconds=min(seconds, max(every, MAX_SYNC_BACKOFF.total_seconds())))


def _syncable() -> Any:
    """The ids of the mailboxes the sync reads (connected, with a provider to read)."""
    return select(Mailbox.id).where(
        Mailbox.status == MailboxStatus.CONNECTED,
        Mailbox.provider.in_((Provider.GOOGLE, Provider.MICROSOFT, Provider.SMTP)))


def ensure_sync_rows(session: Session) -> int:
    """Give every syncable mailbox its ``mailbox_sync`` row (due at once); how many were made."""
    missing = list(session.scalars(_syncable().where(
        ~select(MailboxSync.id).where(MailboxSync.id == Mailbox.id).exists())))
    if not missing:
        return 0
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
        else sqlite.insert
    session.execute(insert(MailboxSync).on_conflict_do_nothing(),
                    [{"id": mailbox_id, "failures": 0, "attempts": 0}
                     for mailbox_id in missing])
    return len(missing)


def claim_due_mailboxes(session: Session, now: datetime, every: float, *,
                        limit: int = SYNC_BATCH, skip: Collection[int] = ()) -> list[Claim]:
    """Claim up to ``limit`` mailboxes whose sync is due at ``now`` and that nobody holds.

    Each claim sets the mailbox's next sync one period (``every`` seconds) ahead at once, so
    no other worker — nor this one after a restart — syncs it again before then. Rows held
    by another worker's live lease, or locked by its claim right now, are skipped. The
    caller commits.
    """
    ready = and_(
        or_(MailboxSync.next_sync_at.is_(None), MailboxSync.next_sync_at <= now),
        or_(MailboxSync.lease_expires_at.is_(None), MailboxSync.lease_expires_at <= now),
        MailboxSync.id.in_(_syncable()))
    if skip:
        ready = and_(ready, MailboxSync.id.not_in(list(skip)))
    return claim(session, MailboxSync, ready=ready,
                 order_by=MailboxSync.next_sync_at.asc().nulls_first(), now=now,
                 lease=max(SYNC_LEASE, timedelta(seconds=every)), limit=limit,
                 values={"next_sync_at": now + timedelta(seconds=every)})


def sync_mailboxes(app: Flask, now: datetime, *, resolver: Any = None) -> SyncResult:
    """One sync pass over the connected mailboxes that are due at ``now`` (``relay worker``).

    The cadence is kept in the database (``mailbox_sync``): due mailboxes are claimed under a
    lease a few at a time (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so with several workers
    each mailbox is synced by one of them once per ``MAIL_SYNC_SECONDS``, and a restarted
    worker does not sync everything again. Each mailbox is synced in three steps so that no
    database transaction stays open while a provider answers (on SQLite an open write would
    block the web app): read the cursors, fetch from the provider with no transaction, then
    apply in one write transaction — only while this worker's lease is still the mailbox's.
    Errors are per mailbox: a refused credential marks it ``needs_reauth``; any other error
    is logged and retried after :func:`sync_backoff`, recorded on its row.
    """
    from server.sending.providers import MailboxResolver

    result = SyncResult()
    every = float(app.config.get("MAIL_SYNC_SECONDS", 60))
    if resolver is None:
        resolver = app.extensions.get("relay.mailbox_resolver")
        if resolver is None:
            resolver = app.extensions["relay.mailbox_resolver"] = MailboxResolver(app)
    writes = app.extensions["relay.write_sessionmaker"]
    done: set[int] = set()
    while True:
        with writes() as session:
            if not done:
                ensure_sync_rows(session)
            claims = claim_due_mailboxes(session, now, every, skip=done)
            session.commit()
        for held in claims:
            done.add(held.id)
            _sync_claimed(app, held, now, every, resolver, result)
        if len(claims) < SYNC_BATCH:
            return result


def _sync_claimed(app: Flask, held: Claim, now: datetime, every: float, resolver: Any,
                  result: SyncResult) -> None:
    """Sync one claimed mailbox and record the outcome on its ``mailbox_sync`` row."""
    reads = app.extensions["relay.sessionmaker"]
    writes = app.extensions["relay.write_sessionmaker"]
    with reads() as session:
        mb = session.get(Mailbox, held.id)
        state = session.get(MailboxSync, held.id)
        failures = state.failures if state is not None else 0
        cursors = load_cursors(session, mb) if mb is not None else {}
        if mb is not None:
            session.expunge(mb)
        session.commit()
    fetched: Fetched | None = None
    error: str | None = None
    try:
        if mb is not None and mb.status is MailboxStatus.CONNECTED:
            # The resolver's cached transport (and its access token) when it has one.
            cached = getattr(resolver, "transport_for", None)
            transport = cached(mb.owner_id) if cached is not None else resolver.build(mb)
            if transport is not None:
                fetched = fetch(mb, transport, cursors, now)
    except ReauthRequired as exc:
        with writes() as session:
            mark_needs_reauth(session, held.id, exc.reason, now)
            release(session, MailboxSync, held, now=now, values={"last_error": exc.reason})
            session.commit()
        result.errors.append(f"mailbox {held.id}: {exc.reason}")
        return
    except (TransportError, OSError, imaplib.IMAP4.error) as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken mailbox must not stop the others
        log.exception("mailbox %s: sync failed unexpectedly", held.id)
        error = f"{type(exc).__name__}: {exc}"
    if error is not None:
        wait = sync_backoff(every, failures + 1)
        log.warning("mailbox %s: sync failed (%d in a row), next try in %d s: %s", held.id,
                    failures + 1, wait.total_seconds(), error)
        with writes() as session:
            release(session, MailboxSync, held, now=now, values={
                "failures": failures + 1, "next_sync_at": now + wait,
                "last_error": error[:2000]})
            session.commit()
        result.errors.append(f"mailbox {held.id}: {error}")
        return
    with writes() as session:
        # Fenced: a worker that lost this mailbox to another (it stalled past the lease)
        # applies nothing; the other one syncs it from the same cursors.
        if not release(session, MailboxSync, held, now=now,
                       values={"failures": 0, "last_error": None, "last_synced_at": now}):
            session.rollback()
            log.warning("mailbox %s: sync lease lost; leaving it to its new holder", held.id)
            return
        row = session.scalar(select(Mailbox).where(Mailbox.id == held.id,
                                                   Mailbox.status == MailboxStatus.CONNECTED))
        if fetched is not None and row is not None:
            apply(session, row, fetched, now, result)
        session.commit()
