"""The org's Salesforce connection: settings, storing tokens, refreshing, status changes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.api.errors import FieldError
from server.crypto import KeyRing
from server.errors import Invalid
from server.salesforce import auth
from server.salesforce.client import (
    API_VERSION,
    SalesforceApi,
    SalesforceFailure,
    SimpleSalesforceApi,
    http_session,
)
from server.salesforce.mapping import template_errors
from server.salesforce.models import (
    AuthKind,
    ConnectionStatus,
    SalesforceConnection,
    SyncItem,
    SyncStatus,
)

log = logging.getLogger("relay.salesforce")

#: How long an org is paused after REQUEST_LIMIT_EXCEEDED (the limit is a rolling 24 hours).
LIMIT_PAUSE = timedelta(minutes=30)
EXTERNAL_ID_DEFAULT = "Relay_Id__c"


def get_connection(session: Session, org_id: int, *, create: bool = False,
                   lock: bool = False) -> SalesforceConnection | None:
    """The org's connection row (made, disconnected, with default settings if ``create``)."""
    stmt = select(SalesforceConnection).where(SalesforceConnection.org_id == org_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    conn = session.scalar(stmt)
    if conn is None and create:
        conn = SalesforceConnection(org_id=org_id)
        session.add(conn)
        session.flush()
    return conn


def save_settings(session: Session, org_id: int, *, sync_reminders: bool | None = None,
                  subject_template: str | None = None,
                  external_id_field: str | None = None, clear_external_id: bool = False
                  ) -> SalesforceConnection:
    """Change the org's activity settings; an invalid template is a 422 naming its fields."""
    errors: list[FieldError] = []
    if subject_template is not None:
        if not subject_template.strip():
            errors.append(FieldError("subject_template", "must not be empty"))
        errors += [FieldError("subject_template", e) for e in template_errors(subject_template)]
        if len(subject_template) > 2000:
            errors.append(FieldError("subject_template", "at most 2,000 characters"))
    if external_id_field is not None and not (
            external_id_field.endswith("__c") and external_id_field[:-3].replace("_", "")
            .isalnum()):
        errors.append(FieldError("external_id_field",
                                 "must be a custom field API name such as Relay_Id__c"))
    if errors:
        raise Invalid(errors)
    conn = get_connection(session, org_id, create=True)
    assert conn is not None
    if sync_reminders is not None:
        conn.sync_reminders = sync_reminders
    if subject_template is not None:
        conn.subject_template = subject_template
    if external_id_field is not None:
        conn.external_id_field = external_id_field
    elif clear_external_id:
        conn.external_id_field = None
    session.flush()
    return conn


def set_status(conn: SalesforceConnection, status: ConnectionStatus, reason: str | None,
               now: datetime, *, paused_until: datetime | None = None) -> None:
    """Move the connection to ``status`` with a reason the admin page shows."""
    conn.status = status
    conn.status_reason = reason
    conn.paused_until = paused_until
    conn.updated_at = now


def store_tokens(session: Session, conn: SalesforceConnection, ring: KeyRing,
                 tokens: auth.Tokens, *, kind: AuthKind, username: str | None,
                 now: datetime) -> None:
    """Record a successful connection: tokens sealed, status connected, cursor from now."""
    conn.auth_kind = kind
    conn.username = username
    conn.instance_url = tokens.instance_url
    conn.identity_url = tokens.identity_url
    conn.access_token = ring.encrypt(tokens.access_token)
    if tokens.refresh_token:
        conn.refresh_token = ring.encrypt(tokens.refresh_token)
    elif kind is AuthKind.JWT:
        conn.refresh_token = None
    if conn.connected_at is None or conn.modstamp_cursor is None:
        conn.modstamp_cursor = now
    conn.connected_at = now
    set_status(conn, ConnectionStatus.CONNECTED, None, now)
    session.flush()


def disconnect(session: Session, org_id: int, now: datetime) -> None:
    """Forget the tokens; waiting items stay in the outbox until the org connects again."""
    conn = get_connection(session, org_id)
    if conn is None:
        return
    conn.access_token = None
    conn.refresh_token = None
    set_status(conn, ConnectionStatus.DISCONNECTED, "disconnected by an admin", now)
    session.flush()


def fresh_tokens(config: Mapping[str, Any], conn: SalesforceConnection,
                 ring: KeyRing, now: datetime) -> auth.Tokens:
    """New tokens for a connection whose access token expired (refresh token, or a new JWT)."""
    http = http_session(config.get("SALESFORCE_CA_BUNDLE"))
    login_url = str(config["SALESFORCE_LOGIN_URL"])
    if conn.auth_kind is AuthKind.JWT:
        if not conn.username:
            raise auth.TokenError("no_user", "the connection has no integration user")
        return auth.jwt_bearer(http, login_url, str(config["SALESFORCE_CLIENT_ID"]),
                               conn.username, jwt_private_key(config), now,
                               config.get("SALESFORCE_JWT_AUDIENCE"))
    if not conn.refresh_token:
        raise auth.TokenError("no_refresh_token", "connect again to grant offline access")
    return auth.refresh(http, login_url, str(config["SALESFORCE_CLIENT_ID"]),
                        str(config["SALESFORCE_CLIENT_SECRET"]),
                        ring.decrypt(conn.refresh_token))


def jwt_private_key(config: Mapping[str, Any]) -> str:
    """The connected app's private key for JWT bearer (``SALESFORCE_JWT_KEY_FILE``)."""
    path = config.get("SALESFORCE_JWT_KEY_FILE")
    if not path:
        raise auth.TokenError("no_key", "set SALESFORCE_JWT_KEY_FILE to the connected app's "
                                        "private key (PEM)")
    try:
        return Path(str(path)).read_text()
    except OSError as exc:
        raise auth.TokenError("no_key", f"cannot read SALESFORCE_JWT_KEY_FILE: "
                                        f"{exc.strerror}") from None


def api_for(config: Mapping[str, Any], conn: SalesforceConnection,
            ring: KeyRing) -> SalesforceApi:
    """The real client of a connected org."""
    if not conn.access_token or not conn.instance_url:
        raise auth.TokenError("not_connected", "the org has no Salesforce session")
    return SimpleSalesforceApi.connect(
        conn.instance_url, ring.decrypt(conn.access_token),
        ca_bundle=config.get("SALESFORCE_CA_BUNDLE"),
        version=str(config.get("SALESFORCE_API_VERSION") or API_VERSION))


@dataclass
class Overview:
    """What the admin page and the status endpoint show."""

    conn: SalesforceConnection | None
    counts: dict[str, int]
    problems: list[SyncItem]


def overview(session: Session, org_id: int, limit: int = 50) -> Overview:
    """The org's connection, outbox counts by status and the latest unmatched/failed items."""
    counts = {s.value: 0 for s in SyncStatus}
    for status, n in session.execute(
            select(SyncItem.status, func.count()).where(SyncItem.org_id == org_id)
            .group_by(SyncItem.status)):
        counts[SyncStatus(status).value] = n
    problems = list(session.scalars(
        select(SyncItem).where(SyncItem.org_id == org_id,
                               SyncItem.status.in_([SyncStatus.UNMATCHED, SyncStatus.FAILED]))
        .order_by(SyncItem.updated_at.desc(), SyncItem.id.desc()).limit(limit)))
    return Overview(get_connection(session, org_id), counts, problems)


def retry_problems(session: Session, org_id: int, now: datetime) -> int:
    """Put the org's unmatched and failed items back in the queue (after fixing Salesforce)."""
    return session.execute(
        update(SyncItem)
        .where(SyncItem.org_id == org_id,
               SyncItem.status.in_([SyncStatus.UNMATCHED, SyncStatus.FAILED]))
        .values(status=SyncStatus.PENDING, due_at=now, reason=None, updated_at=now)
    ).rowcount


def finish_connect(session: Session, config: Mapping[str, Any], ring: KeyRing, org_id: int,
                   tokens: auth.Tokens, *, kind: AuthKind, username: str | None,
                   now: datetime) -> SalesforceConnection:
    """Store a new connection and find out whether Task has Relay's external-id field."""
    conn = get_connection(session, org_id, create=True, lock=True)
    assert conn is not None
    store_tokens(session, conn, ring, tokens, kind=kind, username=username, now=now)
    try:
        fields = api_for(config, conn, ring).external_id_fields()
    except SalesforceFailure as exc:
        # Not fatal: without the field, retries find Tasks by their CallObject marker.
        log.warning("could not describe Task for org %s: %s", org_id, exc)
        fields = []
    if conn.external_id_field is None and EXTERNAL_ID_DEFAULT in fields:
        conn.external_id_field = EXTERNAL_ID_DEFAULT
    session.flush()
    return conn


def reseal_tokens(session: Session, ring: KeyRing) -> int:
    """Re-encrypt every stored Salesforce token with the newest key (after a key rotation).

    Returns how many values changed; values already under the newest key are left alone, so
    running it twice changes nothing the second time. Old keys can be removed afterwards.
    """
    changed = 0
    for conn in session.scalars(select(SalesforceConnection).with_for_update()):
        for attr in ("access_token", "refresh_token"):
            value = getattr(conn, attr)
            if value:
                new = ring.reencrypt(value)
                if new != value:
                    setattr(conn, attr, new)
                    changed += 1
    session.flush()
    return changed
