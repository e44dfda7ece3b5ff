"""Shared fixtures: a migrated database per test (SQLite or TEST_DATABASE_URL) and builders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from server import db
from server.accounts.models import Org, Role, User
from server.accounts.service import create_token, create_user
from server.app import create_app
from server.campaigns.models import Campaign
from server.campaigns.service import StepInput, create_campaign
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from server.contacts.models import Contact
from server.db import Base, make_engine
from server.migrations import upgrade

PG_URL = os.environ.get("TEST_DATABASE_URL")

#: ``RELAY_TEST_NOW=<ISO moment>`` moves this process's clock to that moment for the whole
#: run (it keeps ticking from there): ``.ci/run`` runs the time-related tests at a European
#: daylight-saving night, at the last minute of a year and more than a year ahead, to show
#: that no test builds its expectations from the real date. time-machine moves what Python
#: reads (``datetime.now``, ``time.time``…); Debian's libfaketime was tried first and hangs
#: or fails Python's ``time.sleep`` (``clock_nanosleep`` with an absolute monotonic time).
MOVED_NOW = os.environ.get("RELAY_TEST_NOW")


def pytest_configure(config: pytest.Config) -> None:
    """Move the process clock when ``RELAY_TEST_NOW`` asks for it."""
    if MOVED_NOW:
        import time_machine

        moment = datetime.fromisoformat(MOVED_NOW)
        if moment.tzinfo is None:
            raise pytest.UsageError("RELAY_TEST_NOW needs a UTC offset, e.g. +00:00")
        traveller = time_machine.travel(moment, tick=True)
        traveller.start()
        config.stash[_TRAVELLER] = traveller


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say when the clock is moved, so a failure is read against the right date."""
    return f"process clock moved to {MOVED_NOW} (RELAY_TEST_NOW)" if MOVED_NOW else None


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the clock back."""
    traveller = config.stash.get(_TRAVELLER, None)
    if traveller is not None:
        traveller.stop()


_TRAVELLER = pytest.StashKey[Any]()


@pytest.fixture(scope="session")
def _migrated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run the Alembic migrations once: into a template SQLite file, or the PostgreSQL DB."""
    if PG_URL:
        from server.config import normalise_database_url

        url = normalise_database_url(PG_URL)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        upgrade(url)
        return url
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture
def database_url(_migrated: str, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database for one test."""
    if PG_URL:
        engine = make_engine(_migrated)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        engine.dispose()
        yield _migrated
        return
    path = tmp_path / "relay.sqlite3"
    shutil.copy(_migrated, path)
    yield f"sqlite:///{path}"


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The app bound to the per-test database."""
    app = create_app({
        "TESTING": True,
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret",
        "FEED_STREAM_SECONDS": 1.0,
        "FEED_POLL_SECONDS": 0.05,
        "WORKER_POLL_SECONDS": 0.05,
        # The tests' SMTP and IMAP servers listen on 127.0.0.1 (server/mailboxes/hosts.py).
        "MAIL_HOST_ALLOWLIST": "127.0.0.1,localhost,::1",
    })
    yield app
    db.dispose(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    """A CLI runner."""
    return app.test_cli_runner()


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    """A session on the test database (its own, outside any request)."""
    s: Session = app.extensions["relay.sessionmaker"]()
    yield s
    s.close()


@pytest.fixture
def now() -> datetime:
    """A fixed moment: Tuesday 24 November 2026, 10:00 UTC."""
    return datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


# -- builders -----------------------------------------------------------------------------


def make_org(session: Session, name: str = "Acme") -> Org:
    """An org."""
    org = Org(name=name)
    session.add(org)
    session.flush()
    return org


def make_user(session: Session, org: Org, email: str, *, role: Role = Role.REP,
              timezone: str = "UTC", password: str | None = "secret-pw") -> User:
    """A user in ``org``."""
    return create_user(session, org=org, email=email, name=email.split("@")[0].title(),
                       role=role, timezone=timezone, password=password)


def make_contact(session: Session, owner: User, email: str | None = None,
                 **values: Any) -> Contact:
    """A contact owned by ``owner``."""
    contact = Contact(org_id=owner.org_id, owner_id=owner.id,
                      email=email if email is not None else f"c{id(values)}@example.com",
                      first_name=values.pop("first_name", "Pat"),
                      last_name=values.pop("last_name", "Doe"), **values)
    session.add(contact)
    session.flush()
    return contact


def make_template(session: Session, owner: User, name: str = "Intro") -> Template:
    """A template in the owner's org."""
    template = Template(org_id=owner.org_id, created_by_id=owner.id, name=name,
                        subject="Hello {{first_name}}", body_html="<p>Hi</p>")
    session.add(template)
    session.flush()
    return template


def email_step(day: int, option: SendOption, template: Template, *,
               send_time: time | None = None, follow_up: bool = False) -> StepInput:
    """An email step input."""
    return StepInput(day=day, type=StepType.EMAIL, send_option=option, send_time=send_time,
                     follow_up=follow_up, template_id=template.id)


def task_step(day: int, kind: StepType = StepType.CALL, title: str = "") -> StepInput:
    """A call, InMail or custom step input."""
    return StepInput(day=day, type=kind, title=title)


def make_campaign(session: Session, owner: User, steps: list[StepInput], **settings: Any
                  ) -> Campaign:
    """A saved campaign (settings default to UTC, no weekend skipping)."""
    settings.setdefault("timezone", "UTC")
    name = settings.pop("name", "Campaign")
    return create_campaign(session, owner, name=name, settings=settings, steps=steps)


class World:
    """Two orgs; org A has an admin and two reps with tokens; org B has one rep."""

    def __init__(self, session: Session) -> None:
        self.org = make_org(session, "Org A")
        self.other_org = make_org(session, "Org B")
        self.admin = make_user(session, self.org, "admin@a.test", role=Role.ADMIN)
        self.rep = make_user(session, self.org, "rep@a.test", timezone="Europe/Paris")
        self.rep2 = make_user(session, self.org, "rep2@a.test")
        self.outsider = make_user(session, self.other_org, "rep@b.test")
        self.tokens = {u.email: create_token(session, u) for u in
                       (self.admin, self.rep, self.rep2, self.outsider)}
        session.commit()

    def auth(self, user: User) -> dict[str, str]:
        """Headers that authenticate as ``user``."""
        return {"Authorization": f"Bearer {self.tokens[user.email]}"}


@pytest.fixture
def world(session: Session) -> World:
    """Two orgs with users and tokens."""
    return World(session)
