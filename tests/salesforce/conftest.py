"""Fixtures and builders for the Salesforce tests: the fake server and a connected org."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.crypto import app_keyring
from server.db import session_scope
from server.salesforce.auth import Tokens
from server.salesforce.fake import FakeSalesforce
from server.salesforce.models import AuthKind, SalesforceConnection, SyncItem
from server.salesforce.service import get_connection, store_tokens

# Fernet keys as ENCRYPTION_KEYS takes them (kid:key): the current one, a newer, a foreign one.
KEY_1 = "k1:MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="
KEY_2 = "k2:MjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjI="
KEY_3 = "k3:MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzM="


@pytest.fixture
def fake_sf() -> Iterator[FakeSalesforce]:
    """A fake Salesforce on 127.0.0.1 (HTTPS with its own certificate)."""
    fake = FakeSalesforce().start()
    yield fake
    fake.stop()


@pytest.fixture
def sf_app(app: Flask, fake_sf: FakeSalesforce) -> Flask:
    """The app configured to reach the fake Salesforce."""
    app.config.update(SALESFORCE_LOGIN_URL=fake_sf.url, SALESFORCE_CA_BUNDLE=str(fake_sf.cert_path),
                      SALESFORCE_CLIENT_ID=fake_sf.client_id,
                      SALESFORCE_CLIENT_SECRET=fake_sf.client_secret,
                      ENCRYPTION_KEYS=KEY_1)
    return app


def connect(app: Flask, fake: FakeSalesforce, org_id: int, now: datetime, *,
            sync_reminders: bool = True, external_id_field: str | None = None,
            with_refresh: bool = True, **settings: Any) -> None:
    """Store a working OAuth connection to the fake for ``org_id``."""
    refresh = fake._token_response(refresh=True)["refresh_token"] if with_refresh else None
    tokens = Tokens(access_token=fake.issue_token(), instance_url=fake.url,
                    identity_url=f"{fake.url}/id/00D/005", refresh_token=refresh)
    with session_scope(app) as s:
        conn = get_connection(s, org_id, create=True)
        assert conn is not None
        store_tokens(s, conn, app_keyring(app), tokens, kind=AuthKind.OAUTH,
                     username="admin@a.test", now=now)
        conn.sync_reminders = sync_reminders
        conn.external_id_field = external_id_field
        for k, v in settings.items():
            setattr(conn, k, v)


def items(session: Session) -> list[SyncItem]:
    """Every sync item, oldest first, read afresh."""
    session.commit()
    session.expire_all()
    return list(session.scalars(select(SyncItem).order_by(SyncItem.id)))


def connection(session: Session, org_id: int) -> SalesforceConnection:
    """The org's connection, read afresh."""
    session.commit()
    session.expire_all()
    conn = session.scalar(select(SalesforceConnection)
                          .where(SalesforceConnection.org_id == org_id))
    assert conn is not None
    return conn
