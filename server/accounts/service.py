"""Account operations: create users, issue and check API tokens, check passwords."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from server.accounts.models import ApiToken, Org, Role, User
from server.db import utcnow

TOKEN_PREFIX = "rly_"
LAST_USED_RESOLUTION = timedelta(minutes=5)
#: ``API_TOKEN_DAYS`` when unset: how long a new API token works.
DEFAULT_TOKEN_DAYS = 90


class AccountError(ValueError):
    """A bad input to an account operation, with the field it concerns."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def valid_timezone(name: str) -> bool:
    """True when ``name`` is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def get_or_create_org(session: Session, name: str) -> Org:
    """The org called ``name``, created if missing."""
    org = session.scalar(select(Org).where(Org.name == name))
    if org is None:
        org = Org(name=name)
        session.add(org)
        session.flush()
    return org


def create_user(
    session: Session,
    *,
    org: Org,
    email: str,
    name: str,
    role: Role = Role.REP,
    title: str = "",
    timezone: str = "UTC",
    password: str | None = None,
) -> User:
    """Create a user; the email must be unused and the time zone known."""
    email = email.strip().lower()
    if "@" not in email:
        raise AccountError("email", f"{email!r} is not an email address")
    if not valid_timezone(timezone):
        raise AccountError("timezone", f"unknown time zone {timezone!r}")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise AccountError("email", f"a user with email {email} already exists")
    user = User(org_id=org.id, email=email, name=name, role=role, title=title,
                timezone=timezone)
    if password:
        user.password_hash = generate_password_hash(password)
    session.add(user)
    session.flush()
    return user


def hash_token(token: str) -> str:
    """The stored form of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_days() -> int:
    """``API_TOKEN_DAYS`` of the current app (the default outside one)."""
    from flask import current_app, has_app_context

    if has_app_context():
        return int(current_app.config.get("API_TOKEN_DAYS") or DEFAULT_TOKEN_DAYS)
    return DEFAULT_TOKEN_DAYS


def create_token(session: Session, user: User, name: str = "",
                 scope: str | None = None, *, now: datetime | None = None,
                 days: int | None = None) -> str:
    """Issue a new API token for ``user`` and return it; only its hash is stored.

    A ``scope`` limits the token to one client's endpoints (``server.accounts.scopes``). The
    token expires ``days`` (default ``API_TOKEN_DAYS``) after ``now``.
    """
    now = now or utcnow()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), name=name,
                         prefix=token[:8], scope=scope, created_at=now,
                         expires_at=now + timedelta(days=days or token_days())))
    session.flush()
    return token


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    """The user's own API tokens (expired ones included), newest first."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)
                                .order_by(ApiToken.id.desc())))


def revoke_tokens(session: Session, user: User, *, token_id: int | None = None,
                  prefix: str | None = None) -> int:
    """Delete the user's token by id or by prefix (neither: all of them); how many went."""
    stmt = delete(ApiToken).where(ApiToken.user_id == user.id)
    if token_id is not None:
        stmt = stmt.where(ApiToken.id == token_id)
    if prefix is not None:
        stmt = stmt.where(ApiToken.prefix == prefix)
    return int(session.execute(stmt).rowcount or 0)


def end_sessions(user: User) -> None:
    """Invalidate every web session of ``user`` (sign-out): their cookies stop working."""
    user.session_generation = (user.session_generation or 0) + 1


def user_for_token(session: Session, token: str) -> User | None:
    """The user an API token belongs to, or None; records when it was last used."""
    found = user_and_scope_for_token(session, token)
    return found[0] if found is not None else None


def user_and_scope_for_token(session: Session, token: str) -> tuple[User, str | None] | None:
    """The user an API token belongs to and the token's scope, or None; records its use."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(
        select(User, ApiToken.id, ApiToken.last_used_at, ApiToken.scope, ApiToken.expires_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_token(token))
    ).first()
    if row is None:
        return None
    user, token_id, last_used, scope, expires_at = row
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        return None
    touch_token(session, token_id, last_used, now)
    return user, scope


def touch_token(session: Session | Connection, token_id: int, last_used: datetime | None,
                now: datetime) -> None:
    """Record that a token was used, writing at most every few minutes.

    A write per request would serialise readers on SQLite; every token lookup calls this.
    """
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


_DUMMY_HASH: list[str] = []


def _dummy_hash() -> str:
    """A hash made once per process with the default method, checked for unknown emails."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(generate_password_hash(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user with this email and password, or None."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.password_hash:
        # Spend the same time as a real check (one hash check, with the same method and
        # cost) so the answer's timing does not reveal which emails have an account.
        check_password_hash(_dummy_hash(), password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def set_password(user: User, password: str) -> None:
    """Replace the user's password."""
    user.password_hash = generate_password_hash(password)
