"""Sessions and API tokens (README, Security).

Sign-out ends the session server-side; tokens expire after API_TOKEN_DAYS, record their last
use, and their owner lists and revokes them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import ApiToken
from server.accounts.service import create_token
from server.cli import main
from tests.conftest import World

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _csrf(client: FlaskClient, path: str = "/sign-in") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def _sign_in(client: FlaskClient, email: str = "rep@a.test") -> None:
    r = client.post("/sign-in", data={"csrf": _csrf(client), "email": email,
                                      "password": "secret-pw"})
    assert r.status_code == 302


def test_a_cookie_copied_before_sign_out_no_longer_works(app: Flask, world: World):
    """Replaying the session cookie after sign-out is refused (page and API)."""
    browser = app.test_client()
    _sign_in(browser)
    cookie = browser.get_cookie("session").value
    assert browser.get("/").status_code == 200
    csrf = _csrf(browser, "/")
    assert browser.post("/sign-out", data={"csrf": csrf}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    assert thief.get("/").status_code == 302  # sent to the sign-in page
    assert thief.get("/api/tasks").status_code == 401
    # signing in again works, and only the new cookie
    _sign_in(browser)
    assert browser.get("/").status_code == 200
    assert thief.get("/").status_code == 302


def test_a_token_expires_after_api_token_days(app: Flask, world: World, session: Session):
    """A token made at T0 works until T0 + API_TOKEN_DAYS, then answers 401."""
    app.config["API_TOKEN_DAYS"] = 30
    client = app.test_client()
    with time_machine.travel(T0, tick=False):
        with app.app_context():
            token = create_token(session, world.rep, "short")
        session.commit()
    row = session.scalar(select(ApiToken).where(ApiToken.name == "short"))
    assert row.expires_at == T0 + timedelta(days=30)
    headers = {"Authorization": f"Bearer {token}"}
    with time_machine.travel(T0 + timedelta(days=29, hours=23), tick=False):
        assert client.get("/api/tasks", headers=headers).status_code == 200
    with time_machine.travel(T0 + timedelta(days=30, seconds=1), tick=False):
        assert client.get("/api/tasks", headers=headers).status_code == 401


def test_the_outlook_dialogs_token_expires_too(app: Flask, world: World, session: Session):
    """The add-in token handed out by the Outlook sign-in dialog has an expiry."""
    client = app.test_client()
    r = client.post("/addin/outlook/sign-in", data={
        "csrf": _csrf(client, "/addin/outlook/sign-in"), "email": "rep@a.test",
        "password": "secret-pw"})
    assert r.status_code == 200
    session.rollback()
    row = session.scalar(select(ApiToken).where(ApiToken.scope == "outlook"))
    assert row.expires_at is not None
    assert row.expires_at - row.created_at == timedelta(days=90)


def test_owners_list_and_revoke_their_tokens_through_the_api(client: FlaskClient,
                                                             world: World, session: Session):
    """GET /api/tokens lists only mine (no secret); DELETE revokes mine, 404 for another's."""
    extra = create_token(session, world.rep, "laptop")
    session.commit()
    mine = client.get("/api/tokens", headers=world.auth(world.rep))
    assert mine.status_code == 200
    names = sorted(t["name"] for t in mine.json["items"])
    assert names == ["", "laptop"]
    assert extra not in mine.get_data(as_text=True)
    item = next(t for t in mine.json["items"] if t["name"] == "laptop")
    assert item["last_used_at"] is None and item["expires_at"] and item["prefix"]
    assert client.delete(f"/api/tokens/{item['id']}",
                         headers=world.auth(world.rep2)).status_code == 404
    r = client.delete(f"/api/tokens/{item['id']}", headers=world.auth(world.rep))
    assert r.status_code == 200
    assert client.get("/api/tasks", headers={"Authorization": f"Bearer {extra}"}
                      ).status_code == 401
    used = client.get("/api/tokens", headers=world.auth(world.rep)).json["items"]
    assert [t["name"] for t in used] == [""] and used[0]["last_used_at"] is not None


def test_the_tokens_page_lists_and_revokes(client: FlaskClient, world: World,
                                           session: Session):
    """The signed-in rep sees their tokens on /tokens and revokes one there."""
    extra = create_token(session, world.rep, "laptop")
    session.commit()
    _sign_in(client)
    page = client.get("/tokens").get_data(as_text=True)
    assert "laptop" in page and extra not in page
    row = session.scalar(select(ApiToken).where(ApiToken.name == "laptop"))
    r = client.post(f"/tokens/{row.id}/revoke", data={"csrf": _csrf(client, "/tokens")})
    assert r.status_code == 302
    assert client.get("/api/tasks", headers={"Authorization": f"Bearer {extra}"}
                      ).status_code == 401


def test_relay_token_revoke(app: Flask, world: World, session: Session, database_url: str):
    """`relay token revoke --email --prefix` revokes that token; `--all` every one."""
    extra = create_token(session, world.rep, "laptop")
    session.commit()
    runner = app.test_cli_runner()
    env = {"DATABASE_URL": database_url}
    r = runner.invoke(main, ["token", "revoke", "--email", "rep@a.test", "--prefix", extra[:8]],
                      env=env)
    assert r.exit_code == 0, r.output
    assert "revoked 1" in r.output
    client = app.test_client()
    assert client.get("/api/tasks", headers={"Authorization": f"Bearer {extra}"}
                      ).status_code == 401
    assert client.get("/api/tasks", headers=world.auth(world.rep)).status_code == 200
    r = runner.invoke(main, ["token", "revoke", "--email", "rep@a.test", "--all"], env=env)
    assert r.exit_code == 0 and "revoked 1" in r.output
    assert client.get("/api/tasks", headers=world.auth(world.rep)).status_code == 401
