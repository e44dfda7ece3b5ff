"""Accounts: users, passwords and API tokens (stored hashed, checked on every /api call)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.accounts.models import ApiToken, Org, Role
from server.accounts.service import (
    AccountError,
    authenticate,
    create_token,
    get_or_create_org,
    set_password,
    user_for_token,
)
from server.db import utcnow
from tests.conftest import World, make_org, make_user


def test_create_user_normalises_the_email(session: Session):
    """Is a new user's email stored trimmed and lower-case, with the given role and zone?"""
    org = make_org(session)
    user = make_user(session, org, "  Mixed.Case@Example.COM ", role=Role.ADMIN,
                     timezone="Asia/Kolkata")
    assert (user.email, user.role, user.timezone) == (
        "mixed.case@example.com", Role.ADMIN, "Asia/Kolkata")


@pytest.mark.parametrize(("email", "timezone", "field"), [
    ("no-at-sign", "UTC", "email"), ("ok@example.com", "Not/AZone", "timezone")])
def test_create_user_refuses_bad_input_by_field(session: Session, email: str, timezone: str,
                                                field: str):
    """Is a bad email or an unknown time zone refused with an error naming that field?"""
    org = make_org(session)
    with pytest.raises(AccountError) as info:
        make_user(session, org, email, timezone=timezone)
    assert info.value.field == field


def test_create_user_refuses_a_taken_email_in_any_org(session: Session):
    """Is an email already used (in another org, other case) refused?"""
    make_user(session, make_org(session, "A"), "taken@example.com")
    with pytest.raises(AccountError, match="already exists"):
        make_user(session, make_org(session, "B"), "TAKEN@example.com")


def test_get_or_create_org_reuses_by_name(session: Session):
    """Does asking twice for the same org name give the same org, and one row?"""
    first = get_or_create_org(session, "Initech")
    assert get_or_create_org(session, "Initech").id == first.id
    assert len(session.scalars(select(Org).where(Org.name == "Initech")).all()) == 1


def test_passwords_are_hashed_and_checked(session: Session):
    """Is the password stored hashed, checked case-insensitively on email, and replaceable?"""
    user = make_user(session, make_org(session), "pw@example.com", password="first-pw")
    assert user.password_hash and "first-pw" not in user.password_hash
    assert authenticate(session, "PW@example.com", "first-pw") is user
    assert authenticate(session, "pw@example.com", "First-pw") is None
    set_password(user, "second-pw")
    assert authenticate(session, "pw@example.com", "first-pw") is None
    assert authenticate(session, "pw@example.com", "second-pw") is user


def test_token_is_stored_only_as_its_hash(session: Session):
    """Is a new token returned once, and stored as its SHA-256 with a short prefix only?"""
    user = make_user(session, make_org(session), "t@example.com")
    token = create_token(session, user, "laptop")
    row = session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
    assert row is not None
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.prefix, row.name)
    assert row.prefix == token[:8] and len(row.prefix) < len(token) // 4
    assert create_token(session, user) != token


def test_user_for_token_accepts_only_real_tokens(session: Session):
    """Does a token find its user, while a changed or foreign-looking one finds nobody?"""
    user = make_user(session, make_org(session), "u@example.com")
    token = create_token(session, user)
    assert user_for_token(session, token) is user
    assert user_for_token(session, token[:-1]) is None
    assert user_for_token(session, "rly_" + "x" * 43) is None
    assert user_for_token(session, hashlib.sha256(token.encode()).hexdigest()) is None


def test_token_use_is_recorded_at_most_every_few_minutes(session: Session):
    """Is last_used_at set on first use and refreshed only when it is older than 5 minutes?"""
    user = make_user(session, make_org(session), "l@example.com")
    token = create_token(session, user)
    user_for_token(session, token)
    first = session.scalar(select(ApiToken.last_used_at))
    assert first is not None
    user_for_token(session, token)
    assert session.scalar(select(ApiToken.last_used_at)) == first
    old = utcnow() - timedelta(minutes=10)
    session.execute(update(ApiToken).values(last_used_at=old))
    user_for_token(session, token)
    assert session.scalar(select(ApiToken.last_used_at)) > old


def test_api_without_token_says_how_to_get_one(client: FlaskClient, world: World):
    """Is a call without a token a 401 that tells the caller how to create one?"""
    r = client.get("/api/tasks")
    assert r.status_code == 401
    assert r.json["error"] == "unauthorized"
    assert "relay token create" in r.json["message"]


def test_api_token_identifies_the_caller(client: FlaskClient, world: World):
    """Does each token act as its own user (a contact created with it belongs to them)?"""
    for user in (world.rep, world.rep2, world.outsider):
        r = client.post("/api/contacts", headers=world.auth(user),
                        json={"email": "same@example.com"})
        assert r.status_code == 201 and r.json["owner_id"] == user.id


def test_deleted_users_token_stops_working(client: FlaskClient, session: Session, world: World):
    """Once a user is deleted, is their token a 401?"""
    h = world.auth(world.rep2)
    assert client.get("/api/contacts", headers=h).status_code == 200
    session.delete(world.rep2)
    session.commit()
    assert client.get("/api/contacts", headers=h).status_code == 401
