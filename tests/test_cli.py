"""The `relay` command line: db upgrade, user create, token create, contacts import."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from server.accounts.models import ApiToken, Role, User
from server.accounts.service import authenticate
from server.cli import main
from server.contacts.models import Contact
from tests.conftest import World


@pytest.fixture
def relay(runner: Any, database_url: str):
    """Run `relay ARGS` against the test database (the CLI builds its own app from the env)."""

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(main, list(args), env={"DATABASE_URL": database_url},
                             input=input, catch_exceptions=False)

    return invoke


def test_db_upgrade_creates_the_schema_on_an_empty_database(runner: Any, tmp_path: Path):
    """Does `relay db upgrade` build every table in a new SQLite file, and is a rerun harmless?"""
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade"], env={"DATABASE_URL": url})
        assert result.exit_code == 0, result.output
        assert "database is up to date" in result.output
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "org", "user", "api_token", "contact", "template", "campaign",
            "campaign_step", "enrollment", "enrollment_step", "task"} <= tables


def test_db_upgrade_on_the_test_database(relay: Any):
    """Is `relay db upgrade` a no-op on an already migrated database (SQLite or PostgreSQL)?"""
    result = relay("db", "upgrade")
    assert result.exit_code == 0, result.output


def test_user_create_makes_a_user_who_can_sign_in(relay: Any, session: Session):
    """Does `relay user create` store the user (org created) with a hashed password?"""
    result = relay("user", "create", "--email", "Sam@Example.com", "--name", "Sam",
                   "--org", "Demo Co", "--role", "admin", "--timezone", "Europe/Berlin",
                   "--password", "correct horse")
    assert result.exit_code == 0, result.output
    assert "created admin sam@example.com" in result.output and "Demo Co" in result.output
    user = session.scalar(select(User).where(User.email == "sam@example.com"))
    assert user is not None
    assert (user.role, user.timezone, user.org.name) == (Role.ADMIN, "Europe/Berlin", "Demo Co")
    assert user.password_hash and "correct horse" not in user.password_hash
    assert authenticate(session, "sam@example.com", "correct horse") is not None
    assert authenticate(session, "sam@example.com", "wrong") is None
    session.commit()


def test_user_create_prompts_for_the_password(relay: Any, session: Session):
    """Without --password, is the password asked for twice and then stored?"""
    result = relay("user", "create", "--email", "p@example.com", "--name", "P", "--org", "O",
                   input="s3cret-pw\ns3cret-pw\n")
    assert result.exit_code == 0, result.output
    assert authenticate(session, "p@example.com", "s3cret-pw") is not None
    session.commit()


def test_user_create_reuses_an_org_and_refuses_duplicates(relay: Any, session: Session):
    """Does a second user join the same org by name, and is a repeated email refused?"""
    for email in ("a@example.com", "b@example.com"):
        assert relay("user", "create", "--email", email, "--name", "X", "--org", "Same",
                     "--password", "pw").exit_code == 0
    orgs = {u.org_id for u in session.scalars(select(User))}
    session.commit()
    assert len(orgs) == 1
    result = relay("user", "create", "--email", "A@example.com", "--name", "X", "--org", "Same",
                   "--password", "pw")
    assert result.exit_code == 1
    assert "email: a user with email a@example.com already exists" in result.output


def test_user_create_refuses_an_unknown_timezone(relay: Any, session: Session):
    """Is an unknown --timezone refused with a message naming it, and nothing stored?"""
    result = relay("user", "create", "--email", "t@example.com", "--name", "T", "--org", "O",
                   "--timezone", "Moon/Base", "--password", "pw")
    assert result.exit_code == 1
    assert "timezone: unknown time zone 'Moon/Base'" in result.output
    assert session.scalar(select(User)) is None
    session.commit()


def test_token_create_prints_a_working_token_stored_hashed(relay: Any, client: FlaskClient,
                                                           session: Session, world: World):
    """Does `relay token create` print a token that works on /api and is stored only hashed?"""
    result = relay("token", "create", "--email", "REP@a.test")
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("rly_") and len(token) > 30

    r = client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json

    rows = session.execute(select(ApiToken.__table__)).all()
    session.commit()
    assert all(token not in str(value) for row in rows for value in row)
    digest = hashlib.sha256(token.encode()).hexdigest()
    mine = [row for row in rows if row.token_hash == digest]
    assert len(mine) == 1 and mine[0].user_id == world.rep.id and mine[0].name == "cli"


def test_token_create_for_an_unknown_email_says_what_to_do(relay: Any, world: World):
    """Does an unknown email give a non-zero exit and point at `relay user create`?"""
    result = relay("token", "create", "--email", "nobody@a.test")
    assert result.exit_code == 1
    assert "no user with email nobody@a.test" in result.output
    assert "relay user create" in result.output


CSV = ("first_name,last_name,email,company,custom_field_source\n"
       "Ada,Lovelace,ada@example.com,Engines,webinar\n"
       "Alan,Turing,alan@example.com,Bletchley,\n")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "contacts.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_contacts_import_stores_the_file(relay: Any, session: Session, world: World,
                                         tmp_path: Path):
    """Does `relay contacts import` store every row for the rep, with custom fields?"""
    result = relay("contacts", "import", _write(tmp_path, CSV), "--email", "rep@a.test")
    assert result.exit_code == 0, result.output
    assert "imported 2 contacts (0 already present, 0 bad rows skipped)" in result.stdout
    rows = list(session.scalars(select(Contact).order_by(Contact.id)))
    session.commit()
    assert [(c.email, c.owner_id) for c in rows] == [
        ("ada@example.com", world.rep.id), ("alan@example.com", world.rep.id)]
    assert rows[0].custom_fields == {"source": "webinar"} and rows[1].custom_fields == {}


def test_contacts_import_with_bad_rows_stores_nothing(relay: Any, session: Session,
                                                      world: World, tmp_path: Path):
    """Does a file with bad rows list every one, exit 1, suggest --skip-errors, store nothing?"""
    text = CSV + "Bad,Row,not-an-email,X,\nShort,Row\n"
    result = relay("contacts", "import", _write(tmp_path, text), "--email", "rep@a.test")
    assert result.exit_code == 1
    assert "contacts.csv: line 4.email:" in result.stderr
    assert "contacts.csv: line 5: has 2 cells; the header has 5" in result.stderr
    assert "2 bad rows; nothing was imported" in result.stderr
    assert "--skip-errors" in result.stderr
    assert session.scalar(select(Contact)) is None
    session.commit()


def test_contacts_import_skip_errors_keeps_the_good_rows(relay: Any, session: Session,
                                                         world: World, tmp_path: Path):
    """With --skip-errors, are the good rows stored and the bad ones still listed?"""
    text = CSV + "Bad,Row,not-an-email,X,\n"
    result = relay("contacts", "import", _write(tmp_path, text), "--email", "rep@a.test",
                   "--skip-errors")
    assert result.exit_code == 0, result.output
    assert "line 4.email" in result.stderr
    assert "imported 2 contacts (0 already present, 1 bad rows skipped)" in result.stdout
    emails = set(session.scalars(select(Contact.email)))
    session.commit()
    assert emails == {"ada@example.com", "alan@example.com"}


def test_contacts_import_for_an_unknown_email(relay: Any, world: World, tmp_path: Path):
    """Is an import for an email with no user refused with what to do next?"""
    result = relay("contacts", "import", _write(tmp_path, CSV), "--email", "ghost@a.test")
    assert result.exit_code == 1
    assert "no user with email ghost@a.test" in result.output
    assert "relay user create" in result.output


def test_contacts_import_of_a_missing_file(relay: Any, world: World, tmp_path: Path):
    """Is a path that does not exist refused by the argument check, naming it?"""
    result = relay("contacts", "import", str(tmp_path / "nope.csv"), "--email", "rep@a.test")
    assert result.exit_code == 2
    assert "nope.csv" in result.output and "does not exist" in result.output
