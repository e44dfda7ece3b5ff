"""Each rep's connected mailbox: tables and the operations on them.

A rep has at most one mailbox (``mailbox.owner_id`` is unique). Its provider is Google (Gmail
API), Microsoft (Graph), SMTP (+ IMAP) or the local outbox folder (the embedded default).
Refresh tokens and passwords live only in ``Mailbox.secret``, encrypted with the app's key
ring (:mod:`server.crypto`), and are never returned or logged: :func:`mailbox_view` is the
only shape a mailbox leaves the service in.

States: ``connected``; ``needs_reauth`` when the provider refused our grant (``invalid_grant``)
until the rep reconnects; ``disconnected``; and, orthogonally, ``paused_until`` when a daily
sending limit was reached (the dispatcher calls :func:`pause_mailbox`).
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.crypto import KeyRing
from server.db import Base, JSONType, enum_column, utcnow
from server.leases import Leased

log = logging.getLogger(__name__)


class Provider(enum.StrEnum):
    """Where a mailbox sends from."""

    GOOGLE = "google"
    MICROSOFT = "microsoft"
    SMTP = "smtp"
    OUTBOX = "outbox"


class MailboxStatus(enum.StrEnum):
    """Whether the mailbox can be used; the pause for daily limits is ``paused_until``."""

    CONNECTED = "connected"
    NEEDS_REAUTH = "needs_reauth"
    DISCONNECTED = "disconnected"


MAILBOX_TRANSITIONS: dict[MailboxStatus, frozenset[MailboxStatus]] = {
    MailboxStatus.CONNECTED: frozenset({MailboxStatus.NEEDS_REAUTH, MailboxStatus.DISCONNECTED,
                                        MailboxStatus.CONNECTED}),
    MailboxStatus.NEEDS_REAUTH: frozenset({MailboxStatus.CONNECTED,
                                           MailboxStatus.DISCONNECTED}),
    MailboxStatus.DISCONNECTED: frozenset({MailboxStatus.CONNECTED}),
}

#: Provider sending limits per day (Gmail: Workspace 2,000, consumer accounts 500;
#: Exchange Online 10,000 recipients). SMTP's is the connection's own setting.
GMAIL_WORKSPACE_LIMIT = 2000
GMAIL_CONSUMER_LIMIT = 500
GRAPH_LIMIT = 10000
SMTP_DEFAULT_LIMIT = 500
OUTBOX_LIMIT = 100000
CONSUMER_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def provider_daily_limit(provider: Provider, email: str, configured: int | None = None) -> int:
    """The most this mailbox may send per day, as its provider allows."""
    if provider is Provider.GOOGLE:
        domain = email.rpartition("@")[2].lower()
        return GMAIL_CONSUMER_LIMIT if domain in CONSUMER_GMAIL_DOMAINS else GMAIL_WORKSPACE_LIMIT
    if provider is Provider.MICROSOFT:
        return GRAPH_LIMIT
    if provider is Provider.SMTP:
        return configured if configured and configured > 0 else SMTP_DEFAULT_LIMIT
    return OUTBOX_LIMIT


class Mailbox(Base):
    """A rep's connected mailbox."""

    __tablename__ = "mailbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          unique=True)
    provider: Mapped[Provider] = mapped_column(enum_column(Provider, 16))
    status: Mapped[MailboxStatus] = mapped_column(enum_column(MailboxStatus, 16),
                                                  default=MailboxStatus.CONNECTED)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    #: ``{kid}:{Fernet token}`` of a JSON object (refresh token or password); never shown.
    secret: Mapped[str | None] = mapped_column(Text, default=None)
    #: Non-secret connection settings (SMTP/IMAP hosts and ports, outbox folder, tenant).
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    daily_limit: Mapped[int] = mapped_column(Integer)
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    connected_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MailboxCursor(Base):
    """Where the last sync of one mailbox folder stopped.

    Gmail: a history id; Graph: a delta link; IMAP: ``uidvalidity:uid``.
    """

    __tablename__ = "mailbox_cursor"
    __table_args__ = (UniqueConstraint("mailbox_id", "folder"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"))
    folder: Mapped[str] = mapped_column(String(32))
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MailboxSync(Leased, Base):
    """When a mailbox is next synced, and which worker is syncing it (one row per mailbox).

    The sync cadence lives here, not in a worker's memory: a worker *claims* a due row (its
    lease, :mod:`server.leases`), which also sets ``next_sync_at`` one
    ``MAIL_SYNC_SECONDS`` ahead, so with any number of workers, restarted or not, each
    mailbox is synced once per period. A failed sync is retried after a backoff that grows
    with ``failures`` (reset by the next sync that works, or by a reconnect).
    """

    __tablename__ = "mailbox_sync"

    #: The mailbox's id (one row per mailbox, made by the first sync pass that sees it).
    id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"),
                                    primary_key=True, autoincrement=False)
    next_sync_at: Mapped[datetime | None] = mapped_column(default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_synced_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class OAuthState(Base):
    """A started OAuth connection: the ``state`` we sent (hashed) and the PKCE verifier."""

    __tablename__ = "mailbox_oauth_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          index=True)
    provider: Mapped[Provider] = mapped_column(enum_column(Provider, 16))
    #: Encrypted JSON: the PKCE code verifier (Google) or msal's auth code flow (Microsoft).
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class MatchKind(enum.StrEnum):
    """What a synced message turned out to be."""

    SENT = "sent"
    REPLY = "reply"
    BOUNCE = "bounce"
    AUTO_REPLY = "auto_reply"


class MailMatch(Base):
    """A message found by the mailbox sync and what it matched, with why (one per message)."""

    __tablename__ = "mail_match"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "provider_message_id", "kind"),
        Index("ix_mail_match_thread", "mailbox_id", "thread_id"),
        Index("ix_mail_match_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id", ondelete="CASCADE"))
    kind: Mapped[MatchKind] = mapped_column(enum_column(MatchKind, 16))
    provider_message_id: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(998), default=None)
    thread_id: Mapped[str | None] = mapped_column(String(255), default=None)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"),
                                                default=None, index=True)
    send_id: Mapped[int | None] = mapped_column(
        ForeignKey("scheduled_send.id", ondelete="SET NULL"), default=None)
    enrollment_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment.id", ondelete="SET NULL"), default=None, index=True)
    matched_by: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- service ------------------------------------------------------------------------------


class MailboxError(ValueError):
    """A connection request that cannot be carried out; names the field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class MailboxView:
    """A mailbox as responses and logs show it: no secret, only whether one is stored."""

    id: int
    provider: Provider
    status: MailboxStatus
    email: str
    display_name: str
    daily_limit: int
    paused_until: datetime | None
    pause_reason: str | None
    last_error: str | None
    connected_at: datetime
    has_secret: bool
    settings: dict[str, Any]


#: Settings keys that are safe to show (anything else in ``settings`` stays inside).
_SHOWN_SETTINGS = ("smtp_host", "smtp_port", "smtp_security", "smtp_username", "imap_host",
                   "imap_port", "imap_security", "imap_sent_folder", "imap_drafts_folder",
                   "outbox_path", "tenant")


def mailbox_view(mb: Mailbox) -> MailboxView:
    """The masked, shareable view of a mailbox."""
    return MailboxView(
        id=mb.id, provider=mb.provider, status=mb.status, email=mb.email,
        display_name=mb.display_name, daily_limit=mb.daily_limit,
        paused_until=mb.paused_until, pause_reason=mb.pause_reason, last_error=mb.last_error,
        connected_at=mb.connected_at, has_secret=mb.secret is not None,
        settings={k: mb.settings[k] for k in _SHOWN_SETTINGS if k in (mb.settings or {})},
    )


def get_mailbox(session: Session, owner_id: int) -> Mailbox | None:
    """The rep's mailbox row (in any state), or None."""
    return session.scalar(select(Mailbox).where(Mailbox.owner_id == owner_id))


def usable(mb: Mailbox | None, now: datetime) -> bool:
    """Whether a mailbox can send at ``now``: connected and not paused."""
    return (mb is not None and mb.status is MailboxStatus.CONNECTED
            and (mb.paused_until is None or mb.paused_until <= now))


def read_secret(mb: Mailbox, keyring: KeyRing) -> dict[str, Any]:
    """The decrypted secret of a mailbox (empty when it has none)."""
    return json.loads(keyring.decrypt(mb.secret)) if mb.secret else {}


def connect(session: Session, *, org_id: int, owner_id: int, provider: Provider, email: str,
            display_name: str, settings: dict[str, Any], secret: dict[str, Any] | None,
            keyring: KeyRing | None, now: datetime, daily_limit: int | None = None) -> Mailbox:
    """Connect (or reconnect) the rep's one mailbox, replacing any previous connection.

    A reconnect to the same address keeps the sync cursors; another address or provider
    starts them afresh. The secret is encrypted with the current key before it is stored.
    """
    if secret is not None and keyring is None:
        raise MailboxError("a key ring is needed to store the mailbox's secret")
    stored = keyring.encrypt(json.dumps(secret)) if secret is not None and keyring else None
    limit = provider_daily_limit(provider, email, daily_limit)
    mb = get_mailbox(session, owner_id)
    if mb is None:
        mb = Mailbox(org_id=org_id, owner_id=owner_id, provider=provider, email=email,
                     display_name=display_name, settings=settings, secret=stored,
                     daily_limit=limit, status=MailboxStatus.CONNECTED, connected_at=now,
                     created_at=now, updated_at=now)
        session.add(mb)
    else:
        if mb.provider is not provider or mb.email.lower() != email.lower():
            session.execute(MailboxCursor.__table__.delete()
                            .where(MailboxCursor.mailbox_id == mb.id))
        mb.provider, mb.email, mb.display_name = provider, email, display_name
        mb.settings, mb.secret, mb.daily_limit = settings, stored, limit
        mb.status, mb.last_error, mb.connected_at, mb.updated_at = (
            MailboxStatus.CONNECTED, None, now, now)
        mb.paused_until, mb.pause_reason = None, None
        # New credentials: sync at the next pass, with no backoff left from the old ones.
        session.execute(update(MailboxSync).where(MailboxSync.id == mb.id)
                        .values(next_sync_at=None, failures=0, last_error=None))
    session.flush()
    log.info("mailbox %s connected for user %s: %s %s", mb.id, owner_id, provider.value, email)
    return mb


def disconnect(session: Session, owner_id: int, now: datetime) -> bool:
    """Forget the rep's credentials and stop sending and syncing; False when none connected."""
    mb = get_mailbox(session, owner_id)
    if mb is None or mb.status is MailboxStatus.DISCONNECTED:
        return False
    mb.status, mb.secret, mb.updated_at = MailboxStatus.DISCONNECTED, None, now
    session.execute(MailboxCursor.__table__.delete().where(MailboxCursor.mailbox_id == mb.id))
    session.flush()
    log.info("mailbox %s disconnected", mb.id)
    return True


def mark_needs_reauth(session: Session, mailbox_id: int, reason: str, now: datetime) -> bool:
    """The provider refused our grant: the rep must reconnect (sending and sync stop)."""
    changed = session.execute(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id, Mailbox.status == MailboxStatus.CONNECTED)
        .values(status=MailboxStatus.NEEDS_REAUTH, last_error=reason[:2000], updated_at=now)
    ).rowcount
    if changed:
        log.warning("mailbox %s needs reauthorisation: %s", mailbox_id, reason[:200])
    return bool(changed)


def mark_needs_reauth_for_owner(session: Session, owner_id: int, reason: str,
                                now: datetime) -> bool:
    """:func:`mark_needs_reauth` by the rep's id (what the dispatcher knows)."""
    mb = get_mailbox(session, owner_id)
    return mb is not None and mark_needs_reauth(session, mb.id, reason, now)


def pause_mailbox(session: Session, mailbox_id: int, until: datetime, reason: str,
                  now: datetime) -> None:
    """Stop sending from a mailbox until ``until`` (a daily limit was reached)."""
    session.execute(update(Mailbox).where(Mailbox.id == mailbox_id)
                    .values(paused_until=until, pause_reason=reason[:2000], updated_at=now))
    log.warning("mailbox %s paused until %s: %s", mailbox_id, until.isoformat(), reason[:200])


def pause_owner_mailbox(session: Session, owner_id: int, reason: str, now: datetime,
                        hours: float = 24) -> datetime | None:
    """Pause the rep's mailbox for ``hours`` (Gmail's daily limit: 24 h); the end, or None."""
    mb = get_mailbox(session, owner_id)
    if mb is None:
        return None
    until = now + timedelta(hours=hours)
    pause_mailbox(session, mb.id, until, reason, now)
    return until


def reencrypt_secrets(session: Session, keyring: KeyRing) -> int:
    """Re-encrypt every stored secret under the current key (key rotation); how many changed."""
    changed = 0
    for model in (Mailbox, OAuthState):
        for row in session.scalars(select(model).where(model.secret.is_not(None))):
            assert row.secret is not None
            new = keyring.reencrypt(row.secret)
            if new != row.secret:
                row.secret = new
                changed += 1
    session.flush()
    return changed


def get_cursor(session: Session, mailbox_id: int, folder: str) -> str | None:
    """The saved sync position of a mailbox folder."""
    return session.scalar(select(MailboxCursor.cursor).where(
        MailboxCursor.mailbox_id == mailbox_id, MailboxCursor.folder == folder))


def set_cursor(session: Session, mailbox_id: int, folder: str, cursor: str,
               now: datetime) -> None:
    """Save where the sync of a mailbox folder stopped."""
    row = session.scalar(select(MailboxCursor).where(
        MailboxCursor.mailbox_id == mailbox_id, MailboxCursor.folder == folder))
    if row is None:
        session.add(MailboxCursor(mailbox_id=mailbox_id, folder=folder, cursor=cursor,
                                  updated_at=now))
    else:
        row.cursor, row.updated_at = cursor, now
    session.flush()
