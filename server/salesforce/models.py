"""Salesforce tables: one connection (with its settings) per org, and the sync outbox."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, JSONType, enum_column, utcnow
from server.leases import Leased

#: The activity subject template a new org starts with.
DEFAULT_SUBJECT_TEMPLATE = "{{activity_type}}: {{activity_subject}}"


class AuthKind(enum.StrEnum):
    """How the org connected: an admin's OAuth web-server flow, or JWT bearer for a user."""

    OAUTH = "oauth"
    JWT = "jwt"


class ConnectionStatus(enum.StrEnum):
    """What the admin page shows; only ``connected`` and ``api_limit`` orgs are synced.

    ``api_limit`` pauses the org until ``paused_until`` (Salesforce's REQUEST_LIMIT_EXCEEDED);
    ``needs_reauth`` waits for an admin to connect again (the refresh failed). Items keep
    waiting in the outbox in every state, so nothing is lost.
    """

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    NEEDS_REAUTH = "needs_reauth"
    API_LIMIT = "api_limit"


CONNECTION_TRANSITIONS: dict[ConnectionStatus, frozenset[ConnectionStatus]] = {
    ConnectionStatus.DISCONNECTED: frozenset({ConnectionStatus.CONNECTED}),
    ConnectionStatus.CONNECTED: frozenset({ConnectionStatus.NEEDS_REAUTH,
                                           ConnectionStatus.API_LIMIT,
                                           ConnectionStatus.DISCONNECTED,
                                           ConnectionStatus.CONNECTED}),
    ConnectionStatus.API_LIMIT: frozenset({ConnectionStatus.CONNECTED,
                                           ConnectionStatus.NEEDS_REAUTH,
                                           ConnectionStatus.DISCONNECTED}),
    ConnectionStatus.NEEDS_REAUTH: frozenset({ConnectionStatus.CONNECTED,
                                              ConnectionStatus.DISCONNECTED}),
}


class SalesforceConnection(Base):
    """An org's Salesforce connection (tokens encrypted) and its activity settings."""

    __tablename__ = "salesforce_connection"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"), unique=True)
    status: Mapped[ConnectionStatus] = mapped_column(
        enum_column(ConnectionStatus), default=ConnectionStatus.DISCONNECTED)
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    auth_kind: Mapped[AuthKind | None] = mapped_column(enum_column(AuthKind), default=None)
    #: Who connected: the admin (OAuth) or the integration user's username (JWT).
    username: Mapped[str | None] = mapped_column(String(320), default=None)
    instance_url: Mapped[str | None] = mapped_column(String(300), default=None)
    #: The identity URL Salesforce returned (``id`` in the token response).
    identity_url: Mapped[str | None] = mapped_column(String(300), default=None)
    #: Encrypted with the key ring of ``server.crypto`` (``<key id>:<Fernet token>``).
    access_token: Mapped[str | None] = mapped_column(Text, default=None)
    refresh_token: Mapped[str | None] = mapped_column(Text, default=None)
    #: A custom external-id field on Task (``Relay_Id__c``) when the org has one.
    external_id_field: Mapped[str | None] = mapped_column(String(80), default=None)
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    #: Polling cursor: the largest ``SystemModstamp`` already read back.
    modstamp_cursor: Mapped[datetime | None] = mapped_column(default=None)
    polled_at: Mapped[datetime | None] = mapped_column(default=None)
    sync_reminders: Mapped[bool] = mapped_column(Boolean, default=False,
                                                 server_default="0")
    subject_template: Mapped[str] = mapped_column(Text, default=DEFAULT_SUBJECT_TEMPLATE)
    connected_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SyncKind(enum.StrEnum):
    """What an outbox item does in Salesforce."""

    TASK = "task"            # a campaign task → a Salesforce Task, "Not Started"
    COMPLETE = "complete"    # the task was completed in Relay → Status "Completed"
    EMAIL = "email"          # a sent email → a completed Task of Type "Email"
    REPLY = "reply"          # a detected reply → a completed Task "Reply: <subject>"


class SyncStatus(enum.StrEnum):
    """States of a sync item; every end state keeps its reason."""

    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    UNMATCHED = "unmatched"   # no Contact or Lead with the person's email: not retried
    FAILED = "failed"         # Salesforce refused the record (a 400): shown, retried by hand
    SKIPPED = "skipped"       # nothing to do (e.g. completing a task that never synced)


SYNC_TRANSITIONS: dict[SyncStatus, frozenset[SyncStatus]] = {
    SyncStatus.PENDING: frozenset({SyncStatus.CLAIMED, SyncStatus.SKIPPED}),
    SyncStatus.CLAIMED: frozenset({SyncStatus.DONE, SyncStatus.PENDING, SyncStatus.UNMATCHED,
                                   SyncStatus.FAILED, SyncStatus.SKIPPED}),
    SyncStatus.UNMATCHED: frozenset({SyncStatus.PENDING}),
    SyncStatus.FAILED: frozenset({SyncStatus.PENDING}),
}


class SyncItem(Leased, Base):
    """One thing to write to Salesforce, claimed by ``relay worker`` under a lease.

    ``external_key`` is unique and is what makes a retry safe: it is the value of the org's
    external-id field (an upsert), or the marker looked up before creating again.
    """

    __tablename__ = "salesforce_sync"
    __table_args__ = (
        Index("ix_salesforce_sync_ready", "status", "due_at"),
        Index("ix_salesforce_sync_org", "org_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    kind: Mapped[SyncKind] = mapped_column(enum_column(SyncKind))
    status: Mapped[SyncStatus] = mapped_column(enum_column(SyncStatus),
                                               default=SyncStatus.PENDING)
    external_key: Mapped[str] = mapped_column(String(80), unique=True)
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("task.id", ondelete="SET NULL"), default=None, index=True)
    send_id: Mapped[int | None] = mapped_column(
        ForeignKey("scheduled_send.id", ondelete="SET NULL"), default=None)
    #: What an email or reply activity says, captured when it happened.
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    due_at: Mapped[datetime]
    sf_id: Mapped[str | None] = mapped_column(String(18), default=None, index=True)
    who_id: Mapped[str | None] = mapped_column(String(18), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    #: Set when Salesforce completed the task first, so the completion is not echoed back.
    remote_completed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
