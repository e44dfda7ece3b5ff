"""Orgs, users and API tokens."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db import Base, enum_column, utcnow


class Role(enum.StrEnum):
    """What a user may do: reps own contacts and tasks, admins also manage the org."""

    REP = "rep"
    ADMIN = "admin"


class Org(Base):
    """A customer organisation; every object belongs to one."""

    __tablename__ = "org"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A rep or an admin of an org."""

    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    role: Mapped[Role] = mapped_column(enum_column(Role), default=Role.REP)
    password_hash: Mapped[str | None] = mapped_column(String(300), default=None)
    #: Bumped by sign-out: a session cookie carrying an older generation is no longer valid.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    org: Mapped[Org] = relationship(lazy="joined")


class ApiToken(Base):
    """A bearer token for the API, stored as its SHA-256 (the token itself is shown once)."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(12))
    #: None: the whole API. A scope (e.g. ``outlook``) limits the token to that client's
    #: endpoints (``server.accounts.scopes``).
    scope: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    #: After this moment the token is refused (``API_TOKEN_DAYS`` after creation).
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
